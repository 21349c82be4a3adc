//! The one status writer: a PUT on the status subresource that carries the object's resourceVersion (so it
//! fails with 409 when the object changed since it was read), under the kind's field manager, bounded in time.

use std::fmt::Debug;
use std::time::Duration;

use kube::api::{Api, PostParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::bounded;

/// Retry after a stale read (409 on the status write): the plan was made from old data.
pub const STALE_RETRY: Duration = Duration::from_millis(250);

/// What a status write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    Written,
    /// The object changed since it was read (409) or is gone (404): nothing was written; a change wakes a new
    /// reconcile.
    Stale,
    /// Nothing to write.
    Unchanged,
}

/// PUTs `obj` with the status `set` gives it, carrying `obj`'s resourceVersion; the written object back.
pub async fn put_status<K>(
    api: &Api<K>,
    obj: &K,
    field_manager: &str,
    set: impl FnOnce(&mut K),
) -> Result<K, kube::Error>
where
    K: Resource + Clone + Serialize + DeserializeOwned + Debug,
{
    let mut body = obj.clone();
    body.meta_mut().managed_fields = None;
    set(&mut body);
    let pp = PostParams {
        dry_run: false,
        field_manager: Some(field_manager.into()),
    };
    bounded(api.replace_status(&obj.name_any(), &pp, &body)).await
}

/// [`put_status`], read as what it did.
pub async fn write_status<K>(
    api: &Api<K>,
    obj: &K,
    field_manager: &str,
    set: impl FnOnce(&mut K),
) -> Result<Written, kube::Error>
where
    K: Resource + Clone + Serialize + DeserializeOwned + Debug,
{
    match put_status(api, obj, field_manager, set).await {
        Ok(_) => Ok(Written::Written),
        // 409: changed since read; 404: deleted meanwhile. Either way the next reconcile (if any) decides.
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => Ok(Written::Stale),
        Err(e) => Err(e),
    }
}
