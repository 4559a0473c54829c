{#- What the service reads for its catalogue: a Parquet file under the home's features folder
    in the local profile, the Postgres relation itself in production. -#}
{{ config(materialized=feast_materialization()) }}

select * from {{ ref('items') }}
