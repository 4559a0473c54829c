{#- Click-through rate shrunk towards a prior: an item shown twice and clicked once is not a 50%
    item. (clicks + prior * strength) / (impressions + strength); equals the prior when nothing
    was shown, and tends to clicks / impressions as impressions grow. Clicks beyond the
    impressions (clicks on items the log never showed: organic traffic, imported logs) do not
    count: the rate is about what was shown, and must stay within [0, 1]. Cast to a double, which
    Postgres would otherwise keep as the literals' exact numeric. -#}
{% macro smoothed_ctr(clicks, impressions) -%}
    cast(
        (
            least(coalesce({{ clicks }}, 0), coalesce({{ impressions }}, 0))
            + {{ var('ctr_prior') }} * {{ var('ctr_prior_strength') }}
        )
        / (coalesce({{ impressions }}, 0) + {{ var('ctr_prior_strength') }})
        as double precision
    )
{%- endmacro %}
