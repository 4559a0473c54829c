{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key=['user_id', 'observed_at'],
        on_schema_change='fail',
    )
}}

with

activity as (

    {{
        windowed_activity(
            'user_id',
            ref('int_user_activity_hourly'),
            since=late_change_points_since(this) if is_incremental() else none,
        )
    }}

),

positives as (

    select * from {{ ref('int_positive_events') }}

),

items_before_point as (

    select
        activity.user_id,
        activity.observed_at,
        positives.item_id,
        max(positives.ts) as last_interaction_at,
        -- The item's categories, the same on every row (min: Postgres 15 has no any_value).
        min(positives.categories) as categories,
        count(*) as interactions

    from activity
    inner join positives
        on
            activity.user_id = positives.user_id
            and positives.ts < activity.observed_at
    group by 1, 2, 3

),

recent_items as (

    select
        user_id,
        observed_at,
        (array_agg(item_id order by last_interaction_at desc, item_id))[1:{{ var('recent_items') }}]
            as recent_item_ids

    from items_before_point
    group by 1, 2

),

category_counts as (

    select
        user_id,
        observed_at,
        category,
        sum(interactions) as interactions

    from items_before_point, unnest(categories) as unnested (category)
    group by 1, 2, 3

),

top_categories as (

    select
        user_id,
        observed_at,
        (array_agg(category order by interactions desc, category))[1:{{ var('top_categories') }}]
            as top_categories

    from category_counts
    group by 1, 2

),

final as (

    select
        activity.user_id,
        activity.observed_at,
        activity.interactions_last_1_hour,
        activity.interactions_last_24_hours,
        activity.interactions_last_7_days,
        activity.interactions_all_time,
        activity.impressions_all_time,
        activity.clicks_all_time,
        {{ smoothed_ctr('activity.clicks_all_time', 'activity.impressions_all_time') }}
            as click_through_rate,
        activity.ratings_all_time as rating_count,
        activity.rating_total_all_time / nullif(activity.ratings_all_time, 0) as rating_mean,
        activity.last_interaction_at,
        {{ days_between('activity.last_interaction_at', 'activity.observed_at') }}
            as days_since_last_interaction,
        -- text[], not varchar[]: Feast's Postgres offline store maps only the former to a list.
        coalesce(
            cast(top_categories.top_categories as text[]), cast(array[] as text[])
        ) as top_categories,
        coalesce(
            cast(recent_items.recent_item_ids as text[]), cast(array[] as text[])
        ) as recent_item_ids

    from activity
    left join recent_items
        on
            activity.user_id = recent_items.user_id
            and activity.observed_at = recent_items.observed_at
    left join top_categories
        on
            activity.user_id = top_categories.user_id
            and activity.observed_at = top_categories.observed_at

)

select * from final
