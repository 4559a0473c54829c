{#- What Feast's offline store reads. Feast's DuckDB store reads files, so in the local profile
    this is a Parquet file under the home's features folder (dbt-duckdb's external
    materialisation); in production Feast reads the Postgres relation itself. -#}
{{ config(materialized=('external' if target.type == 'duckdb' else 'view')) }}

select * from {{ ref('user_features') }}
