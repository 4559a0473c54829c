{#- The event log rows logged after `since` (a SQL expression, or none for everything), renamed,
    cast, and checked against the contract. stg_events keeps the good rows and
    quarantined_events the rest, so one place decides both. The window is applied before
    ranking duplicates, so that a run reads only what is new (plus the late-arrival margin). -#}
{% macro checked_events(since=none) -%}
    with

    source as (

        select * from {{ source('raw', 'events') }}
        {% if since is not none %}
        where logged_at > {{ since }}
        {% endif %}

    ),

    renamed as (

        select
            cast(event_id as varchar) as event_id,
            cast(ts as timestamptz) as ts,
            cast(user_id as varchar) as user_id,
            cast(item_id as varchar) as item_id,
            cast(event_type as varchar) as event_type,
            cast(value as double precision) as value,
            cast(request_id as varchar) as request_id,
            cast(position as integer) as position,
            cast(propensity as double precision) as propensity,
            cast(slot_propensities as double precision[]) as slot_propensities,
            cast(model_version as varchar) as model_version,
            cast(policy as varchar) as policy,
            cast(context as json) as context,
            cast(logged_at as timestamptz) as logged_at

        from source

    ),

    checked as (

        select
            *,
            {{ event_rejection_reason() }} as rejection_reason,
            -- The first logged copy of an event id wins; later copies are duplicates.
            row_number() over (partition by event_id order by logged_at, ts) as occurrence

        from renamed

    )

    select * from checked
{%- endmacro %}

{#- Where an incremental events model starts reading: its newest logged_at, less the margin. -#}
{#- An empty table reads everything: max() of no rows is null, and `x > null` matches nothing. -#}
{% macro late_arrival_watermark(relation) -%}
    coalesce(
        (select max(logged_at) - {{ hours(var('late_arrival_hours')) }} from {{ relation }}),
        cast('-infinity' as timestamptz)
    )
{%- endmacro %}

{#- The newest change point an incremental features model already holds (-infinity if none). -#}
{% macro newest_observed_at(relation) -%}
    coalesce(
        (select max(observed_at) from {{ relation }}),
        cast('-infinity' as timestamptz)
    )
{%- endmacro %}

{#- The staged event columns, in order, qualified by `relation` when given (Postgres has no
    `select * exclude`, so checked_events' own columns are listed by name). -#}
{% macro event_columns(relation=none) -%}
    {%- set columns = [
        'event_id', 'ts', 'user_id', 'item_id', 'event_type', 'value', 'request_id',
        'position', 'propensity', 'slot_propensities', 'model_version', 'policy', 'context', 'logged_at',
    ] -%}
    {%- for column in columns -%}
        {{ relation ~ '.' if relation }}{{ column }}{{ ', ' if not loop.last }}
    {%- endfor -%}
{%- endmacro %}
