{#- How the Feast-facing models are materialised: Feast's DuckDB offline store reads files, so
    Parquet (dbt-duckdb's external materialisation) locally; Postgres relations in production. -#}
{% macro feast_materialization() -%}
    {{ return('external' if target.type == 'duckdb' else 'view') }}
{%- endmacro %}
