{#- One row per entity (user or item, by `key`) and hour with any event: the unit the
    windowed features add up. -#}
{% macro hourly_activity(key) -%}
    with

    events as (

        select * from {{ ref('stg_events') }}

    ),

    hourly as (

        select
            {{ key }},
            date_trunc('hour', ts) as activity_hour,
            count(*) filter (where event_type = 'impression') as impressions,
            count(*) filter (where event_type = 'click') as clicks,
            count(*) filter (where event_type in ('click', 'rating', 'purchase')) as interactions,
            count(*) filter (where event_type = 'rating') as ratings,
            coalesce(sum(value) filter (where event_type = 'rating'), 0) as rating_total,
            max(ts) filter (where event_type in ('click', 'rating', 'purchase'))
                as last_interaction_at

        from events
        group by 1, 2

    )

    select * from hourly
{%- endmacro %}
