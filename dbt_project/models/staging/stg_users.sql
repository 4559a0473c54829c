with

source as (

    select * from {{ source('raw', 'users') }}

),

renamed as (

    select
        cast(user_id as varchar) as user_id,
        cast(age as integer) as age,
        nullif(trim(gender), '') as gender,
        nullif(trim(occupation), '') as occupation,
        nullif(trim(profile_text), '') as profile_text,
        cast(created_at as timestamptz) as created_at

    from source

)

select * from renamed
