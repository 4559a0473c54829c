{#- Event rows that break the contract, with the reason: nothing is dropped silently. A later
    copy of an event id already staged is a duplicate; the same row read again inside the
    late-arrival margin is not. -#}
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

staged as (

    select
        event_id,
        logged_at
    from {{ ref('stg_events') }}

),

{% if is_incremental() %}
    already_quarantined as (

        select quarantine_id from {{ this }}

    ),
{% endif %}

rejected as (

    select
        md5(
            coalesce(checked.event_id, '') || '|' || coalesce(cast(checked.logged_at as varchar), '')
            || '|' || cast(checked.occurrence as varchar)
        ) as quarantine_id,
        {{ event_columns('checked') }},
        coalesce(
            checked.rejection_reason,
            case
                -- The staged copy is never its own duplicate, whichever copy was logged first.
                when
                    (staged.event_id is not null and staged.logged_at != checked.logged_at)
                    or (staged.event_id is null and checked.occurrence > 1)
                    then
                        'event_id: duplicate of an event logged at '
                        || cast(coalesce(staged.logged_at, checked.logged_at) as varchar)
            end
        ) as rejection_reason,
        {{ as_of() }} as quarantined_at

    from checked
    left join staged
        on checked.event_id = staged.event_id

)

select * from rejected
where
    rejection_reason is not null
    {% if is_incremental() %}
        and quarantine_id not in (select already_quarantined.quarantine_id from already_quarantined)
    {% endif %}
