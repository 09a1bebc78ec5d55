//! Running Lua scripts in pipelines, surviving a Redis restart that emptied
//! the script cache.

use redis::aio::ConnectionLike;
use redis::{ErrorKind, RedisError, ServerErrorKind};

use super::QueueError;

/// Runs many invocations of one script in a single pipelined round trip.
/// EVALSHA fails with NOSCRIPT after a Redis restart empties the script cache;
/// then the script is loaded and the pipeline sent once more. Both scripts are
/// safe to resend: an invocation that failed with NOSCRIPT did not run.
pub(crate) async fn invoke_all<T: redis::FromRedisValue>(
    conn: &mut impl ConnectionLike,
    script: &redis::Script,
    invocations: &[redis::ScriptInvocation<'_>],
) -> Result<Vec<T>, QueueError> {
    let mut pipe = redis::pipe();
    for inv in invocations {
        pipe.invoke_script(inv);
    }
    match pipe.query_async::<Vec<T>>(conn).await {
        Err(e) if is_noscript(&e) => {
            script.load_async(conn).await?;
            Ok(pipe.query_async::<Vec<T>>(conn).await?)
        }
        other => Ok(other?),
    }
}

fn is_noscript(e: &RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::NoScript)
}
