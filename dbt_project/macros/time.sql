{#- The end of the interval being processed: var('as_of'), else the environment's
    RECLOOP_AS_OF (how recloop passes it: a changed var makes dbt re-parse the whole project,
    a changed env var only the files that read it), else the run's start. -#}
{% macro as_of() -%}
    {%- set end = var('as_of') or env_var('RECLOOP_AS_OF', '') -%}
    {%- if end -%}
        cast('{{ end }}' as timestamptz)
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
