{#- The wall clock at the start of this dbt run, as a timestamp: "now" for the whole run. -#}
{% macro run_started() -%}
    cast('{{ run_started_at.isoformat() }}' as timestamptz)
{%- endmacro %}
