{#- Click-through rate shrunk towards a prior: an item shown twice and clicked once is not a 50%
    item. (clicks + prior * strength) / (impressions + strength); equals the prior when nothing
    was shown, and tends to clicks / impressions as impressions grow. -#}
{% macro smoothed_ctr(clicks, impressions) -%}
    (
        (coalesce({{ clicks }}, 0) + {{ var('ctr_prior') }} * {{ var('ctr_prior_strength') }})
        / (coalesce({{ impressions }}, 0) + {{ var('ctr_prior_strength') }})
    )
{%- endmacro %}
