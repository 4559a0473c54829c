{#- Point-in-time activity features of an entity (user or item), one row per change point.

    An hour of activity [h, h + 1h) changes the features at h + 1h, when it enters every window,
    and again at h + 2h, h + 25h and h + 169h, when it leaves the 1-hour, 24-hour and 7-day
    windows. Features are computed at exactly those points (up to as_of, and after `since` when
    given), so each row holds the values valid from `observed_at` until the entity's next row,
    counting only events strictly before `observed_at`: a training example at time t, joined
    point-in-time by Feast, never sees its own event or a later one.

    `hourly` has one row per entity and hour (int_<entity>_activity_hourly). -#}
{% macro windowed_activity(key, hourly, since=none) -%}
    {%- set running_totals = [
        'interactions_all_time', 'impressions_all_time', 'clicks_all_time',
        'ratings_all_time', 'rating_total_all_time', 'last_interaction_at',
    ] -%}
    with

    hourly as (

        select * from {{ hourly }}

    ),

    change_points as (

        select distinct
            hourly.{{ key }},
            hourly.activity_hour + shifts.shift as observed_at

        from hourly
        cross join (
            values
                ({{ hours(1) }}),
                ({{ hours(2) }}),
                ({{ hours(25) }}),
                ({{ hours(169) }})
        ) as shifts (shift)

    ),

    points as (

        select * from change_points
        where
            observed_at <= {{ as_of() }}
            {% if since is not none %}
            and observed_at > {{ since }}
            {% endif %}

    ),

    windowed as (

        select
            points.{{ key }},
            points.observed_at,
            cast(coalesce(sum(hourly.interactions) filter (
                where hourly.activity_hour >= points.observed_at - {{ hours(1) }}
            ), 0) as bigint) as interactions_last_1_hour,
            cast(coalesce(sum(hourly.interactions) filter (
                where hourly.activity_hour >= points.observed_at - {{ hours(24) }}
            ), 0) as bigint) as interactions_last_24_hours,
            cast(coalesce(sum(hourly.interactions), 0) as bigint) as interactions_last_7_days

        from points
        left join hourly
            on
                points.{{ key }} = hourly.{{ key }}
                and hourly.activity_hour < points.observed_at
                and hourly.activity_hour >= points.observed_at - {{ hours(168) }}
        group by 1, 2

    ),

    running as (

        select
            {{ key }},
            activity_hour,
            cast(sum(interactions) over history as bigint) as interactions_all_time,
            cast(sum(impressions) over history as bigint) as impressions_all_time,
            cast(sum(clicks) over history as bigint) as clicks_all_time,
            cast(sum(ratings) over history as bigint) as ratings_all_time,
            cast(sum(rating_total) over history as double precision) as rating_total_all_time,
            max(last_interaction_at) over history as last_interaction_at

        from hourly
        window history as (
            partition by {{ key }}
            order by activity_hour
            rows between unbounded preceding and current row
        )

    ),

    totals as (

        -- The running totals of the last active hour before each point.
        {{ last_running_totals(key, running_totals) }}

    ),

    joined as (

        select
            windowed.*,
            {% for column in running_totals -%}
                totals.{{ column }}{{ ',' if not loop.last }}
            {% endfor %}

        from windowed
        inner join totals
            on
                windowed.{{ key }} = totals.{{ key }}
                and windowed.observed_at = totals.observed_at

    )

    select * from joined
{%- endmacro %}
