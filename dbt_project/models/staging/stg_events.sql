{#- The event log, one row per event id: the first logged copy of an id that passes the
    contract (checked_events ranks the copies the same way in every run). Each run reads what
    was logged since its newest logged_at less late_arrival_hours, the newest counting no later
    than the run's start (a row stamped in the future is quarantined until the clock passes
    it), with an anti-join on the ids already staged. -#}
{{
    config(
        materialized='incremental',
        incremental_strategy='append',
        on_schema_change='append_new_columns',
    )
}}

with

checked as (

    {{ checked_events(late_arrival_watermark(this) if is_incremental() else none) }}

),

{% if is_incremental() %}
    already_staged as (

        select event_id from {{ this }}

    ),
{% endif %}

accepted as (

    select {{ event_columns() }}
    from checked
    where
        rejection_reason is null
        and occurrence = 1
        {% if is_incremental() %}
            and event_id not in (select already_staged.event_id from already_staged)
        {% endif %}

)

select * from accepted
