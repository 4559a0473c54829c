{#- What the metrics DAG reads for the requesting users' attributes: a Parquet file under the
    home's features folder in the local profile (no warehouse lock that dbt could need), the
    Postgres relation itself in production. -#}
{{ config(materialized=feast_materialization()) }}

select * from {{ ref('user_attributes') }}
