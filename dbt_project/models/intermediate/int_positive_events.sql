{#- Events that show interest: clicks, ratings and purchases (each rating counts as an implicit
    positive, as in the evaluation protocols), with the item's categories. -#}
with

events as (

    select * from {{ ref('stg_events') }}

),

items as (

    select * from {{ ref('stg_items') }}

),

positives as (

    select
        events.event_id,
        events.user_id,
        events.item_id,
        events.event_type,
        events.value,
        events.ts,
        coalesce(items.categories, cast(array[] as varchar[])) as categories

    from events
    left join items
        on events.item_id = items.item_id
    where events.event_type in ('click', 'rating', 'purchase')

)

select * from positives
