//! A user's credits as the workers synced them (`credit_balances`).

use sqlx::PgPool;

/// The credits of `user` that PostgreSQL holds (0 for a user with none).
pub async fn synced(db: &PgPool, user: &str) -> sqlx::Result<u64> {
    let used: Option<i64> =
        sqlx::query_scalar("SELECT used FROM credit_balances WHERE user_id = $1")
            .bind(user)
            .fetch_optional(db)
            .await?;
    Ok(used.unwrap_or(0) as u64)
}

/// The credits of every user that PostgreSQL holds, in all.
pub async fn synced_total(db: &PgPool) -> sqlx::Result<i64> {
    let total: Option<i64> = sqlx::query_scalar("SELECT sum(used)::int8 FROM credit_balances")
        .fetch_one(db)
        .await?;
    Ok(total.unwrap_or(0))
}
