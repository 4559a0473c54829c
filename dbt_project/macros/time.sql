{#- The end of the interval being processed: var('as_of') or, when empty, the run's start. -#}
{% macro as_of() -%}
    {%- if var('as_of') -%}
        cast('{{ var("as_of") }}' as timestamptz)
    {%- else -%}
        {{ run_started() }}
    {%- endif -%}
{%- endmacro %}

{% macro hours(n) -%}
    interval ({{ n }}) hour
{%- endmacro %}

{#- Fractional days between two timestamps. -#}
{% macro days_between(start, finish) -%}
    (epoch({{ finish }}) - epoch({{ start }})) / 86400.0
{%- endmacro %}
