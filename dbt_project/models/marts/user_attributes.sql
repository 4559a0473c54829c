{#- Who the users are, coarsely: what monitoring compares between the users who ask in an hour
    and those of the week before. Age is kept only as a group (the groups of
    training.data.age_bucket, MovieLens-1M's), free text not at all. -#}
with

users as (

    select * from {{ ref('stg_users') }}

),

grouped as (

    select
        user_id,
        case
            when age is null then 'unknown'
            when age < 18 then '<18'
            when age < 25 then '18-24'
            when age < 35 then '25-34'
            when age < 45 then '35-44'
            when age < 50 then '45-49'
            when age < 56 then '50-55'
            else '56+'
        end as age_group,
        coalesce(gender, 'unknown') as gender,
        coalesce(occupation, 'unknown') as occupation,
        created_at

    from users

)

select * from grouped
