{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key=['item_id', 'observed_at'],
        on_schema_change='fail',
    )
}}

with

activity as (

    {{
        windowed_activity(
            'item_id',
            ref('int_item_activity_hourly'),
            since=late_change_points_since(this) if is_incremental() else none,
        )
    }}

),

items as (

    select * from {{ ref('stg_items') }}

),

final as (

    select
        activity.item_id,
        activity.observed_at,
        activity.interactions_last_1_hour as popularity_last_1_hour,
        activity.interactions_last_24_hours as popularity_last_24_hours,
        activity.interactions_last_7_days as popularity_last_7_days,
        activity.interactions_all_time as popularity_all_time,
        activity.impressions_all_time,
        activity.clicks_all_time,
        {{ smoothed_ctr('activity.clicks_all_time', 'activity.impressions_all_time') }}
            as click_through_rate,
        activity.ratings_all_time as rating_count,
        activity.rating_total_all_time / nullif(activity.ratings_all_time, 0) as rating_mean,
        greatest({{ days_between('items.created_at', 'activity.observed_at') }}, 0)
            as age_in_days

    from activity
    inner join items
        on activity.item_id = items.item_id

)

select * from final
