{#- The catalogue: every item that has entered it by the interval's end, with the text the
    text encoders read. The service recommends from it, items no model has trained on yet
    included (scored from their text by a text-reading champion). -#}
with

items as (

    select * from {{ ref('stg_items') }}

),

available as (

    select
        item_id,
        title,
        item_text,
        categories,
        created_at

    from items
    where created_at <= {{ as_of() }}

)

select * from available
