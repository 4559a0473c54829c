{#- The labelled user-item-time rows training needs. An impression is positive when the same
    request led to a click, rating or purchase of that item; a positive event that answers no
    logged impression (a MovieLens rating, a click from outside the service) is a row of its
    own. A response logged up to late_arrival_hours after its impression still relabels it. -#}
{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key='interaction_id',
        on_schema_change='fail',
    )
}}

with

events as (

    select * from {{ ref('stg_events') }}

),

recent_events as (

    select * from events
    {% if is_incremental() %}
        where logged_at > {{ late_arrival_watermark(this) }}
    {% endif %}

),

responses as (

    select
        request_id,
        item_id,
        bool_or(event_type in ('click', 'purchase')) as is_clicked,
        bool_or(event_type = 'purchase') as is_purchased,
        max(value) filter (where event_type = 'rating') as rating

    from events
    where event_type in ('click', 'rating', 'purchase') and request_id is not null
    group by 1, 2

),

impressions as (

    select
        recent_events.event_id as interaction_id,
        recent_events.user_id,
        recent_events.item_id,
        recent_events.ts as interacted_at,
        'impression' as source_event_type,
        coalesce(responses.is_clicked or responses.rating is not null, false) as is_positive,
        coalesce(responses.is_clicked, false) as is_clicked,
        coalesce(responses.is_purchased, false) as is_purchased,
        responses.rating,
        true as is_impression,
        recent_events.request_id,
        recent_events.position,
        recent_events.propensity,
        recent_events.policy,
        recent_events.model_version,
        recent_events.context,
        recent_events.logged_at

    from recent_events
    left join responses
        on
            recent_events.request_id = responses.request_id
            and recent_events.item_id = responses.item_id
    where recent_events.event_type = 'impression'

),

shown as (

    select distinct
        request_id,
        item_id
    from events
    where event_type = 'impression' and request_id is not null

),

standalone_positives as (

    select
        recent_events.event_id as interaction_id,
        recent_events.user_id,
        recent_events.item_id,
        recent_events.ts as interacted_at,
        recent_events.event_type as source_event_type,
        true as is_positive,
        recent_events.event_type in ('click', 'purchase') as is_clicked,
        recent_events.event_type = 'purchase' as is_purchased,
        case when recent_events.event_type = 'rating' then recent_events.value end as rating,
        false as is_impression,
        recent_events.request_id,
        recent_events.position,
        recent_events.propensity,
        recent_events.policy,
        recent_events.model_version,
        recent_events.context,
        recent_events.logged_at

    from recent_events
    left join shown
        on
            recent_events.request_id = shown.request_id
            and recent_events.item_id = shown.item_id
    where
        recent_events.event_type in ('click', 'rating', 'purchase')
        and shown.item_id is null

),

unioned as (

    select * from impressions
    union all
    select * from standalone_positives

)

select * from unioned
