-- depends_on: {{ ref('stg_events') }}
{{ hourly_activity('item_id') }}
