{#- Models land in the schema their folder names (staging, intermediate, marts, feast), not in
    "<target schema>_<name>": one warehouse per home, so there is nothing to prefix. -#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {{ custom_schema_name | trim if custom_schema_name is not none else target.schema }}
{%- endmacro %}
