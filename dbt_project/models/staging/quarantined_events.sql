{#- Event rows that break the contract, with the reason: nothing is dropped silently. A copy of
    an event id other than the staged one is a duplicate; the same row read again inside the
    late-arrival margin is not quarantined again (its id is a hash of its content). -#}
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

copies as (

    select
        *,
        -- The winning copy's logged_at, for the message when it is not staged (yet).
        first_value(logged_at) over (partition by event_id order by occurrence) as first_logged_at

    from checked

),

staged as (

    select
        stg_events.event_id,
        stg_events.logged_at,
        {{ event_row_hash('stg_events') }} as row_hash

    from {{ ref('stg_events') }} as stg_events
    inner join (select distinct copies.event_id from copies) as read_now
        on stg_events.event_id = read_now.event_id

),

{% if is_incremental() %}
    already_quarantined as (

        select quarantine_id from {{ this }}

    ),
{% endif %}

rejected as (

    select
        md5(copies.row_hash || '|' || cast(copies.copy_number as varchar)) as quarantine_id,
        {{ event_columns('copies') }},
        coalesce(
            copies.rejection_reason,
            case
                -- The staged copy is never its own duplicate, whichever copy was logged first;
                -- of identical rows, the first is the staged one.
                when
                    staged.event_id is not null
                    and (staged.row_hash != copies.row_hash or copies.copy_number > 1)
                    then
                        'event_id: duplicate of an event logged at '
                        || cast(staged.logged_at as varchar)
                when staged.event_id is null and copies.occurrence > 1
                    then
                        'event_id: duplicate of an event logged at '
                        || cast(copies.first_logged_at as varchar)
            end
        ) as rejection_reason,
        {{ as_of() }} as quarantined_at

    from copies
    left join staged
        on copies.event_id = staged.event_id

)

select * from rejected
where
    rejection_reason is not null
    {% if is_incremental() %}
        and quarantine_id not in (select already_quarantined.quarantine_id from already_quarantined)
    {% endif %}
