//! The events the operator publishes on its jobs (events.k8s.io/v1), a
//! repeat folded into the first one's series.
//!
//! kube's `Recorder` kept each event it published for six minutes as a
//! whole typed `Event` beside a whole `ObjectReference`, in a map that
//! never shrinks: at 1000 jobs that was 9 MB of the operator's 24 MB heap
//! (heaptrack, `bench scale`). Its key held the job's resourceVersion,
//! which changes with every status write, so the series it kept them for
//! seldom formed. Here a repeat is the same type, reason and note on the
//! same job (the note of an event cannot change, so a new note is a new
//! event), and what is kept of it is a hash, the event's name, its count
//! and when it was last seen.

use crate::api::TrainingJob;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a repeat still joins the first event's series (as kube's
/// `Recorder` and client-go's broadcaster do).
const SERIES_TTL: Duration = Duration::from_secs(6 * 60);

/// How often the series past their TTL are dropped: a scan per publish
/// would walk every job's entry each time at thousands of jobs.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// What one event says.
pub struct Note<'a> {
    pub warning: bool,
    pub reason: &'a str,
    pub note: &'a str,
}

/// Publishes events as this operator's instance.
pub struct Events {
    client: Client,
    controller: String,
    instance: String,
    series: Mutex<Series>,
}

struct Series {
    seen: HashMap<u64, Seen>,
    pruned: Instant,
}

struct Seen {
    name: String,
    count: i32,
    last: Instant,
}

impl Events {
    pub fn new(client: Client, controller: &str, instance: Option<String>) -> Self {
        Self {
            client,
            controller: controller.into(),
            instance: instance.unwrap_or_else(|| controller.into()),
            series: Mutex::new(Series {
                seen: HashMap::new(),
                pruned: Instant::now(),
            }),
        }
    }

    /// Creates the event, or counts a repeat in the first one's series.
    pub async fn publish(&self, job: &TrainingJob, what: &Note<'_>) -> kube::Result<()> {
        let key = key(job, what);
        let ns = job.namespace().unwrap_or_else(|| "default".into());
        let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        if let Some((name, count)) = self.repeat_of(key, Instant::now()) {
            match add_to_series(&api, &name, count).await {
                Ok(()) => {
                    self.saw(key, name, count);
                    return Ok(());
                }
                // Gone already (the API server's event TTL, or deleted by
                // hand): the repeat starts a series of its own.
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let event = self.event(job, what);
        let created = api.create(&PostParams::default(), &event).await?;
        self.saw(key, created.name_any(), 1);
        Ok(())
    }

    /// The event's name and the count this repeat makes, if it is one.
    fn repeat_of(&self, key: u64, now: Instant) -> Option<(String, i32)> {
        let mut series = self.series.lock().unwrap();
        series.prune(now);
        let seen = series.seen.get(&key)?;
        (now.duration_since(seen.last) < SERIES_TTL).then(|| (seen.name.clone(), seen.count + 1))
    }

    fn saw(&self, key: u64, name: String, count: i32) {
        let last = Instant::now();
        let mut series = self.series.lock().unwrap();
        series.seen.insert(key, Seen { name, count, last });
    }

    fn event(&self, job: &TrainingJob, what: &Note<'_>) -> Event {
        let now = Timestamp::now();
        let regarding = ObjectReference {
            resource_version: None,
            ..job.object_ref(&())
        };
        Event {
            metadata: ObjectMeta {
                namespace: regarding.namespace.clone(),
                name: Some(format!("{}.{:x}", job.name_any(), now.as_nanosecond())),
                ..Default::default()
            },
            event_time: Some(MicroTime(now)),
            action: Some("Reconcile".into()),
            reason: Some(what.reason.into()),
            note: Some(what.note.into()),
            type_: Some(if what.warning { "Warning" } else { "Normal" }.into()),
            regarding: Some(regarding),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Default::default()
        }
    }

    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.series.lock().unwrap().seen.len()
    }
}

impl Series {
    /// Drops series past their TTL and hands back the table a burst grew.
    fn prune(&mut self, now: Instant) {
        if now.duration_since(self.pruned) < PRUNE_EVERY {
            return;
        }
        self.pruned = now;
        self.seen
            .retain(|_, s| now.duration_since(s.last) < SERIES_TTL);
        if self.seen.capacity() > 4 * self.seen.len().max(64) {
            self.seen.shrink_to_fit();
        }
    }
}

/// A series is one job (by uid, so a job of the same name made later
/// starts afresh), one type, one reason and one note.
fn key(job: &TrainingJob, what: &Note<'_>) -> u64 {
    let mut h = DefaultHasher::new();
    (job.uid(), job.namespace(), job.name_any()).hash(&mut h);
    (what.warning, what.reason, what.note).hash(&mut h);
    h.finish()
}

async fn add_to_series(api: &Api<Event>, name: &str, count: i32) -> kube::Result<()> {
    let series = EventSeries {
        count,
        last_observed_time: MicroTime(Timestamp::now()),
    };
    let patch = json!({ "series": series });
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(drop)
}

#[cfg(test)]
mod tests;
