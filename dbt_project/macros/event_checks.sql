{#- Why an event row breaks the contract, or null when it does not. The event log validates
    what it accepts, but the warehouse also reads whatever an upstream writes, so staging checks
    again; the first failing rule names the field. -#}
{% macro event_rejection_reason() -%}
    case
        when event_id is null then 'event_id: is null'
        when logged_at is null then 'logged_at: is null'
        -- The log stamps logged_at when it accepts a row, so a later one comes from a clock
        -- running fast (or an upstream writing into the log's folder): such a row would carry
        -- the late-arrival window past every row logged before it. It is held here until the
        -- wall clock reaches it (see quarantined_events).
        when logged_at > {{ run_started() }}
            + {{ minutes(var('future_tolerance_minutes')) }}
            then 'logged_at: ' || cast(logged_at as varchar) || ' is in the future'
        when ts is null then 'ts: is null'
        when user_id is null or trim(user_id) = '' then 'user_id: is null or empty'
        when item_id is null or trim(item_id) = '' then 'item_id: is null or empty'
        when event_type is null then 'event_type: is null'
        when event_type not in ('impression', 'click', 'rating', 'purchase', 'dismiss')
            then 'event_type: ' || event_type || ' is not one of impression, click, rating, purchase, dismiss'
        -- Future means after the wall clock of this run, not after as_of: a backfill up to an
        -- earlier as_of must not quarantine events that simply happened later.
        when ts > {{ run_started() }}
            + {{ minutes(var('future_tolerance_minutes')) }}
            then 'ts: ' || cast(ts as varchar) || ' is in the future'
        when event_type = 'rating' and (value is null or value < 0.5 or value > 5)
            then 'value: rating ' || coalesce(cast(value as varchar), 'null') || ' is outside [0.5, 5]'
        when propensity is not null and (propensity <= 0 or propensity > 1)
            then 'propensity: ' || cast(propensity as varchar) || ' is outside (0, 1]'
        when position is not null and position < 0
            then 'position: ' || cast(position as varchar) || ' is negative'
        when event_type = 'impression' and position is null
            then 'position: an impression needs its slot'
        -- Lists and arrays are 1-based in both DuckDB and Postgres: slot k is element k + 1.
        when slot_propensities is not null and event_type != 'impression'
            then 'slot_propensities: only an impression carries them'
        when (select min(p) from unnest(slot_propensities) as slots (p)) < 0
            or (select max(p) from unnest(slot_propensities) as slots (p)) > 1
            then 'slot_propensities: a value is outside [0, 1]'
        when slot_propensities is not null
            and (
                coalesce(array_length(slot_propensities, 1), 0) <= position
                or propensity is null
                or slot_propensities[position + 1] != propensity
            )
            then 'slot_propensities: the value at the position is not the propensity'
    end
{%- endmacro %}
