-- depends_on: {{ ref('stg_events') }}
{{ hourly_activity('user_id') }}
