with

source as (

    select * from {{ source('raw', 'items') }}

),

renamed as (

    select
        cast(item_id as varchar) as item_id,
        title,
        coalesce(text, '') as item_text,
        coalesce(categories, cast(array[] as varchar[])) as categories,
        cast(created_at as timestamptz) as created_at

    from source

)

select * from renamed
