{#- The end of the interval being processed: var('as_of') or, when empty, the run's start. -#}
{% macro as_of() -%}
    {%- if var('as_of') -%}
        cast('{{ var("as_of") }}' as timestamptz)
    {%- else -%}
        {{ run_started() }}
    {%- endif -%}
{%- endmacro %}

{#- Written so that DuckDB (local) and Postgres (production) read them alike. -#}
{% macro hours(n) -%}
    (interval '1 hour' * ({{ n }}))
{%- endmacro %}

{% macro minutes(n) -%}
    (interval '1 minute' * ({{ n }}))
{%- endmacro %}

{#- Fractional days between two timestamps. -#}
{% macro days_between(start, finish) -%}
    (date_part('epoch', {{ finish }}) - date_part('epoch', {{ start }})) / 86400.0
{%- endmacro %}
