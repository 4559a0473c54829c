{#- The labelled user-item-time rows training needs. An impression is positive when the same
    request led to a click, rating or purchase of that item, whenever that response arrives; a
    positive event that answers no logged impression (a MovieLens rating, a click from outside
    the service) is a row of its own, until its impression arrives.

    Incremental, so that a run gives what a full rebuild would: the rows of events logged in
    the late-arrival window, the impressions whose request and item an event of that window
    touches (a response relabels its impression however old), and, after the insert, the
    removal of a standalone row whose impression has arrived since (the post-hook). -#}
{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key='interaction_id',
        on_schema_change='fail',
        post_hook=[
            "delete from {{ this }} as answered
            where
                not answered.is_impression
                and answered.request_id is not null
                and exists (
                    select 1 from {{ this }} as shown
                    where
                        shown.is_impression
                        and shown.request_id = answered.request_id
                        and shown.item_id = answered.item_id
                )",
        ],
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

{% if is_incremental() %}
    touched as (

        select distinct
            request_id,
            item_id
        from recent_events
        where request_id is not null

    ),

    labelled_impressions as (

        select events.*
        from events
        inner join touched
            on
                events.request_id = touched.request_id
                and events.item_id = touched.item_id
        where events.event_type = 'impression'

        union all

        select * from recent_events
        where event_type = 'impression' and request_id is null

    ),
{% else %}
    labelled_impressions as (

        select * from events
        where event_type = 'impression'

    ),
{% endif %}

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
        labelled_impressions.event_id as interaction_id,
        labelled_impressions.user_id,
        labelled_impressions.item_id,
        labelled_impressions.ts as interacted_at,
        'impression' as source_event_type,
        coalesce(responses.is_clicked or responses.rating is not null, false) as is_positive,
        coalesce(responses.is_clicked, false) as is_clicked,
        coalesce(responses.is_purchased, false) as is_purchased,
        responses.rating,
        true as is_impression,
        labelled_impressions.request_id,
        labelled_impressions.position,
        labelled_impressions.propensity,
        labelled_impressions.policy,
        labelled_impressions.model_version,
        labelled_impressions.context,
        labelled_impressions.logged_at

    from labelled_impressions
    left join responses
        on
            labelled_impressions.request_id = responses.request_id
            and labelled_impressions.item_id = responses.item_id

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
