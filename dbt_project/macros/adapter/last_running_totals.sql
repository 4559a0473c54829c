{#- For each point (entity, observed_at), the `columns` of the entity's last `running` row
    strictly before observed_at (null when none): an as-of join. DuckDB has one; Postgres
    reads the row through a lateral subquery on the same condition. -#}
{% macro last_running_totals(key, columns) -%}
    {{ return(adapter.dispatch('last_running_totals', 'recloop')(key, columns)) }}
{%- endmacro %}

{% macro duckdb__last_running_totals(key, columns) -%}
    select
        points.{{ key }},
        points.observed_at,
        {% for column in columns -%}
            running.{{ column }}{{ ',' if not loop.last }}
        {% endfor %}
    from points
    asof left join running
        on
            points.{{ key }} = running.{{ key }}
            and points.observed_at > running.activity_hour
{%- endmacro %}

{% macro postgres__last_running_totals(key, columns) -%}
    select
        points.{{ key }},
        points.observed_at,
        {% for column in columns -%}
            running.{{ column }}{{ ',' if not loop.last }}
        {% endfor %}
    from points
    left join lateral (
        select * from running as candidates
        where
            candidates.{{ key }} = points.{{ key }}
            and candidates.activity_hour < points.observed_at
        order by candidates.activity_hour desc
        limit 1
    ) as running on true
{%- endmacro %}
