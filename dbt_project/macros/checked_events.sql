{#- The event log rows logged after `since` (a SQL expression, or none for everything), renamed,
    cast, and checked against the contract. stg_events keeps the good rows and
    quarantined_events the rest, so one place decides both. The window is applied before
    ranking duplicates, so that a run reads only what is new (plus the late-arrival margin). -#}
{% macro checked_events(since=none) -%}
    with

    source as (

        select * from {{ source('raw', 'events') }}
        {% if since is not none %}
        -- A row without logged_at (an upstream writing straight into the log) is read by
        -- every run, so that it is quarantined rather than never seen.
        where logged_at > {{ since }} or logged_at is null
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
            {{ event_row_hash() }} as row_hash

        from renamed

    ),

    ranked as (

        select
            *,
            -- Copies of one event id: the first logged copy that passes the checks wins; ties
            -- on logged_at go to the earlier ts, then to the row's content, so every run and a
            -- full refresh pick the same copy. (Copies that share logged_at are always read
            -- together: the window is on logged_at.)
            row_number() over (
                partition by event_id
                order by
                    case when rejection_reason is null then 0 else 1 end,
                    logged_at,
                    ts,
                    row_hash
            ) as occurrence,
            -- Identical rows (a writer's retry) are numbered apart, so that each has a
            -- quarantine id of its own; they share logged_at, so a run reads all or none.
            row_number() over (partition by row_hash order by row_hash) as copy_number

        from checked

    )

    select * from ranked
{%- endmacro %}

{#- A hash of an event row's content (every column, nulls told apart from any value), the same
    in every run: what identifies a copy of an event. Timestamps enter as epoch seconds, which
    no session time zone changes. `relation` qualifies the columns when given. -#}
{% macro event_row_hash(relation=none) -%}
    {%- set prefix = relation ~ '.' if relation else '' -%}
    {%- set columns = [
        prefix ~ 'event_id',
        'cast(date_part(\'epoch\', ' ~ prefix ~ 'ts) as varchar)',
        prefix ~ 'user_id',
        prefix ~ 'item_id',
        prefix ~ 'event_type',
        'cast(' ~ prefix ~ 'value as varchar)',
        prefix ~ 'request_id',
        'cast(' ~ prefix ~ 'position as varchar)',
        'cast(' ~ prefix ~ 'propensity as varchar)',
        'cast(' ~ prefix ~ 'slot_propensities as varchar)',
        prefix ~ 'model_version',
        prefix ~ 'policy',
        'cast(' ~ prefix ~ 'context as varchar)',
        'cast(date_part(\'epoch\', ' ~ prefix ~ 'logged_at) as varchar)',
    ] -%}
    md5(
        {%- for column in columns %}
        coalesce('v' || {{ column }}, 'n'){{ " || '|' ||" if not loop.last }}
        {%- endfor %}
    )
{%- endmacro %}

{#- Where an incremental events model starts reading: its newest logged_at, less the margin.
    The newest logged_at counts no later than the run's start: a row stamped in the future (a
    writer's clock running fast) is quarantined, and must not move the window past the rows
    logged before it. An empty table reads everything: max() of no rows is null, and `x > null`
    matches nothing. -#}
{% macro late_arrival_watermark(relation) -%}
    coalesce(
        (
            select max(least(logged_at, {{ run_started() }})) - {{ hours(var('late_arrival_hours')) }}
            from {{ relation }}
        ),
        cast('-infinity' as timestamptz)
    )
{%- endmacro %}

{#- Where an incremental features model starts recomputing change points: its newest one, less
    the late-arrival margin, so that an event staged late (up to late_arrival_hours) enters
    every window and running total a full rebuild would count it in (-infinity if empty). -#}
{% macro late_change_points_since(relation) -%}
    coalesce(
        (select max(observed_at) - {{ hours(var('late_arrival_hours')) }} from {{ relation }}),
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
