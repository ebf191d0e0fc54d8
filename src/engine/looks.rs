//! Looks at running exports, batched per source database: the looks of this process that
//! come due within a few milliseconds of each other are one `.show operations (id, ...)`.
//! `kc copy` and `kc serve` time their looks to the ticks of one grid
//! (`EngineOptions::poll_grid`), so the exports in flight are looked at together, often,
//! for one request per tick.

use super::copy::kusto_err;
use super::EngineError;
use crate::kusto::{commands, results, ClientRequestId, KustoApi};
use futures::future::{BoxFuture, FutureExt, Shared};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;

/// How long the first look of a batch waits for others to join it.
const GATHER: Duration = Duration::from_millis(5);

/// A batch's answer, shared by every look in it (an error as whether retrying can help and
/// what it said).
type Answer = Result<Arc<Vec<results::Operation>>, (bool, String)>;
type Look = Shared<BoxFuture<'static, Answer>>;
/// The batch still gathering, per (cluster, database): the ids it will ask for, its answer.
type Open = Arc<Mutex<HashMap<(String, String), (Arc<Mutex<Vec<Uuid>>>, Look)>>>;

#[derive(Default)]
pub struct Looks {
    open: Open,
}

impl Looks {
    /// The operation `id` as `.show operations` lists it now (`None`: not listed), asked for
    /// together with the other looks of this process due now at the same database.
    pub async fn operation(&self, kusto: Arc<dyn KustoApi>, cluster: &str, db: &str, id: Uuid, rid: &ClientRequestId) -> Result<Option<results::Operation>, EngineError> {
        let key = (cluster.to_owned(), db.to_owned());
        let look = {
            let mut open = self.open.lock().unwrap();
            match open.get(&key) {
                // Joined under the lock the batch closes under: in the request, or not joined.
                Some((ids, look)) => {
                    ids.lock().unwrap().push(id);
                    look.clone()
                }
                None => {
                    let ids = Arc::new(Mutex::new(vec![id]));
                    // The batch goes out under the request id of its first look.
                    let look = gather(self.open.clone(), key.clone(), ids.clone(), kusto, rid.clone()).boxed().shared();
                    open.insert(key, (ids, look.clone()));
                    look
                }
            }
        };
        match look.await {
            Ok(operations) => Ok(operations.iter().find(|o| o.id == id).cloned()),
            Err((true, why)) => Err(EngineError::Transient(why)),
            Err((false, why)) => Err(EngineError::Permanent(why)),
        }
    }
}

async fn gather(open: Open, key: (String, String), ids: Arc<Mutex<Vec<Uuid>>>, kusto: Arc<dyn KustoApi>, rid: ClientRequestId) -> Answer {
    tokio::time::sleep(GATHER).await;
    {
        // Closed: a look from now on starts the next batch.
        let mut open = open.lock().unwrap();
        if open.get(&key).is_some_and(|(batch, _)| Arc::ptr_eq(batch, &ids)) {
            open.remove(&key);
        }
    }
    let mut asked = ids.lock().unwrap().clone();
    asked.sort();
    asked.dedup();
    let failed = |e| match kusto_err("show operations", e) {
        EngineError::Transient(why) => (true, why),
        EngineError::Permanent(why) => (false, why),
    };
    let cmd = commands::show_operations(&asked).map_err(failed)?;
    let answer = kusto.execute(&key.1, &cmd, &rid).await.map_err(failed)?;
    Ok(Arc::new(results::operations(&answer).map_err(failed)?))
}
