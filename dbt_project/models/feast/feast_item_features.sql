{#- What Feast's offline store reads: a Parquet file under the home's features folder in the
    local profile, the Postgres relation itself in production. -#}
{{ config(materialized=feast_materialization()) }}

select * from {{ ref('item_features') }}
