//! What the console shows, read from the store once and used by both the JSON API (as it
//! is, serialized) and the pages (rendered).

use std::collections::{BTreeMap, HashMap, HashSet};

use chronik_core::{CorrelationId, EventId, RecordedEvent, StreamId, Version};
use chronik_postgres::{
    HolderKind, HorizonHolder, ParkState, PgRunnerInstance, ProjectionReport, StreamQuery,
};
use chronik_store::EventStore as _;
use futures::StreamExt as _;
use serde::Serialize;
use serde_json::Value;

use crate::error::ApiError;
use crate::state::State;

/// Most events one trace shows.
const MAX_TRACE: u32 = 10_000;

/// `2026-12-02 07:39:17.123 UTC`.
pub(crate) fn time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string()
}

/// The overview page.
#[derive(Debug, Serialize)]
pub(crate) struct Overview {
    pub(crate) schema: String,
    pub(crate) events: u64,
    pub(crate) streams: u64,
    pub(crate) events_last_minute: u64,
    pub(crate) rate_per_second: f64,
    pub(crate) categories: Vec<Category>,
    pub(crate) feed_head: FeedHeadView,
    pub(crate) horizon: Horizon,
    pub(crate) projections: Vec<ProjectionView>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Category {
    pub(crate) category: String,
    pub(crate) streams: u64,
    pub(crate) events: u64,
}

#[derive(Debug, Serialize)]
pub(crate) struct FeedHeadView {
    /// Cursor of the last visible event.
    pub(crate) cursor: Option<String>,
    /// Visible events.
    pub(crate) visible_events: u64,
    /// Cursor of the newest committed event, visible or not.
    pub(crate) newest_committed: Option<String>,
}

/// The transactions holding the feed's horizon, and whether committed events are
/// invisible because of the first (the same facts as `doctor`).
#[derive(Debug, Serialize)]
pub(crate) struct Horizon {
    /// Committed events of this store are invisible until the blocker ends.
    pub(crate) held_back: bool,
    pub(crate) blocker: Option<Holder>,
    pub(crate) holders: Vec<Holder>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Holder {
    pub(crate) kind: &'static str,
    pub(crate) pid: Option<i32>,
    pub(crate) database: Option<String>,
    pub(crate) xid: u64,
    pub(crate) blocker: bool,
    pub(crate) age_seconds: Option<f64>,
    /// Session state and the start of its current query, or the gid.
    pub(crate) detail: String,
    pub(crate) user: Option<String>,
    pub(crate) application_name: Option<String>,
    pub(crate) client_addr: Option<String>,
    pub(crate) how_to_end: String,
    pub(crate) description: String,
}

impl From<&HorizonHolder> for Holder {
    fn from(h: &HorizonHolder) -> Self {
        Self {
            kind: if h.kind == HolderKind::Prepared {
                "prepared"
            } else {
                "session"
            },
            pid: h.pid,
            database: h.database.clone(),
            xid: h.xid,
            blocker: h.blocker,
            age_seconds: h.age_seconds,
            detail: h.detail.clone(),
            user: h.user.clone(),
            application_name: h.application_name.clone(),
            client_addr: h.client_addr.clone(),
            how_to_end: h.how_to_end(),
            description: h.describe(),
        }
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct ProjectionView {
    pub(crate) name: String,
    pub(crate) position: Option<String>,
    pub(crate) events_processed: u64,
    pub(crate) lag_events: u64,
    pub(crate) lag_seconds: f64,
    /// `starting`, `catching_up`, `live`, `failing`, `standby`, `dead`, `stopped`; `None`: no runner ran.
    pub(crate) state: Option<String>,
    pub(crate) owner: Option<String>,
    pub(crate) standbys: Vec<String>,
    pub(crate) dead: Vec<String>,
    pub(crate) locked_by: Option<i32>,
    pub(crate) last_error: Option<String>,
    pub(crate) last_error_at: Option<String>,
    pub(crate) failing_event: Option<String>,
    pub(crate) attempts: u32,
    /// Parked events an operator still has to decide about (pending or skipped).
    pub(crate) parked_open: u64,
    /// Park decisions recorded in all.
    pub(crate) parked_total: u64,
    pub(crate) parked: Vec<Parked>,
    /// Whether this console can rebuild it (the binary registered it).
    pub(crate) rebuildable: bool,
}

#[derive(Debug, Serialize)]
pub(crate) struct Parked {
    pub(crate) event_id: String,
    pub(crate) stream_id: String,
    pub(crate) version: u64,
    pub(crate) state: &'static str,
    pub(crate) reason: String,
    pub(crate) decided_by: String,
}

fn instance(i: &PgRunnerInstance) -> String {
    let pid = i.pid.map_or_else(|| "?".to_owned(), |p| p.to_string());
    let app = i
        .application_name
        .as_deref()
        .filter(|a| !a.is_empty())
        .map_or_else(String::new, |a| format!(" {a}"));
    let since = i.owner_since.unwrap_or(i.started_at);
    format!("pid {pid}{app} since {}", time(since))
}

/// The projections page.
#[derive(Debug, Serialize)]
pub(crate) struct Projections {
    pub(crate) projections: Vec<ProjectionView>,
    /// Whether rebuilds are possible at all (the console has an admin token).
    pub(crate) rebuilds_enabled: bool,
    pub(crate) held_back_by: Option<Holder>,
}

/// A page of the stream listing.
#[derive(Debug, Serialize)]
pub(crate) struct StreamsPage {
    pub(crate) prefix: Option<String>,
    pub(crate) category: Option<String>,
    pub(crate) after: Option<String>,
    pub(crate) limit: u32,
    pub(crate) streams: Vec<StreamRow>,
    /// The `after` of the next page, when this one is full.
    pub(crate) next: Option<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct StreamRow {
    pub(crate) stream_id: String,
    pub(crate) category: String,
    pub(crate) version: u64,
}

/// A page of one stream's events.
#[derive(Debug, Serialize)]
pub(crate) struct StreamPage {
    pub(crate) stream_id: String,
    pub(crate) category: String,
    pub(crate) version: u64,
    pub(crate) from: u64,
    pub(crate) limit: u32,
    pub(crate) events: Vec<EventView>,
    /// The `from` of the next page, when there are more events.
    pub(crate) next_from: Option<u64>,
}

/// One event: as stored, and as read through the upcasters.
#[derive(Debug, Serialize)]
pub(crate) struct EventView {
    pub(crate) event_id: String,
    pub(crate) stream_id: String,
    pub(crate) version: u64,
    pub(crate) cursor: String,
    /// The stored type.
    pub(crate) event_type: String,
    /// The stored schema version.
    pub(crate) schema_version: u32,
    pub(crate) recorded_at: String,
    pub(crate) correlation_id: Option<String>,
    pub(crate) causation_id: Option<String>,
    pub(crate) headers: BTreeMap<String, String>,
    /// The stored payload.
    pub(crate) payload: Value,
    pub(crate) read_as: ReadAs,
}

/// An event as the service's code reads it.
#[derive(Debug, Serialize)]
pub(crate) struct ReadAs {
    /// Whether an upcaster changed it.
    pub(crate) upcast: bool,
    pub(crate) event_type: Option<String>,
    pub(crate) schema_version: Option<u32>,
    /// Present only when upcast (otherwise it is the stored payload).
    pub(crate) payload: Option<Value>,
    /// Why it cannot be read (an upcaster refused it, or it is newer than the code).
    pub(crate) error: Option<String>,
}

impl EventView {
    pub(crate) fn new(state: &State, event: RecordedEvent) -> Self {
        let read_as = match &state.upcasters {
            Some(registry)
                if registry.needs_upcast(event.event_type.as_str(), event.schema_version) =>
            {
                match chronik_store::upcast_recorded(registry, event.clone()) {
                    Ok(up) => ReadAs {
                        upcast: true,
                        event_type: Some(up.event_type.as_str().to_owned()),
                        schema_version: Some(up.schema_version),
                        payload: Some(up.payload),
                        error: None,
                    },
                    Err(e) => ReadAs {
                        upcast: false,
                        event_type: None,
                        schema_version: None,
                        payload: None,
                        error: Some(e.to_string()),
                    },
                }
            }
            _ => ReadAs {
                upcast: false,
                event_type: Some(event.event_type.as_str().to_owned()),
                schema_version: Some(event.schema_version),
                payload: None,
                error: None,
            },
        };
        Self {
            event_id: event.event_id.to_string(),
            stream_id: event.stream_id.as_str().to_owned(),
            version: event.version.get(),
            cursor: event.cursor.to_string(),
            event_type: event.event_type.as_str().to_owned(),
            schema_version: event.schema_version,
            recorded_at: time(event.recorded_at),
            correlation_id: event
                .metadata
                .correlation_id
                .map(|c| c.as_uuid().to_string()),
            causation_id: event.metadata.causation_id.map(|c| c.as_uuid().to_string()),
            headers: event.metadata.headers,
            payload: event.payload,
            read_as,
        }
    }
}

/// An event's causation chain: every event of its correlation, in causal order.
#[derive(Debug, Serialize)]
pub(crate) struct Trace {
    pub(crate) event_id: String,
    pub(crate) correlation_id: Option<String>,
    pub(crate) events: Vec<TraceLine>,
}

#[derive(Debug, Serialize)]
pub(crate) struct TraceLine {
    /// 1 = recorded by a command directly; 2 = caused by a depth-1 event; ...
    pub(crate) depth: usize,
    /// The event that caused it, when that is an event of the chain.
    pub(crate) parent: Option<String>,
    pub(crate) event: EventView,
}

/// Committed events are invisible until the blocker ends: the newest committed event lies
/// beyond the feed head (the rule `projections status` and `doctor` use).
async fn horizon(state: &State) -> Result<(FeedHeadView, Horizon), ApiError> {
    let store = &state.store;
    let head = store
        .feed_head()
        .await
        .map_err(|e| ApiError::store("cannot read the feed head", &e))?;
    let newest = store
        .newest_committed()
        .await
        .map_err(|e| ApiError::store("cannot read the newest committed event", &e))?;
    let holders: Vec<Holder> = store
        .horizon_holders()
        .await
        .map_err(|e| ApiError::store("cannot list the transactions holding the horizon", &e))?
        .iter()
        .map(Holder::from)
        .collect();
    let held_back = newest.is_some() && newest > head.last;
    let blocker = holders.iter().find(|h| h.blocker).cloned();
    Ok((
        FeedHeadView {
            cursor: head.last.map(|c| c.to_string()),
            visible_events: head.visible_events,
            newest_committed: newest.map(|c| c.to_string()),
        },
        Horizon {
            held_back,
            blocker,
            holders,
        },
    ))
}

pub(crate) async fn overview(state: &State) -> Result<Overview, ApiError> {
    let stats = state
        .store
        .store_stats()
        .await
        .map_err(|e| ApiError::store("cannot read the store's size", &e))?;
    let (feed_head, horizon) = horizon(state).await?;
    let projections = projection_views(state).await?;
    #[allow(clippy::cast_precision_loss)]
    let rate_per_second = stats.events_last_minute as f64 / 60.0;
    Ok(Overview {
        schema: state.store.schema().as_str().to_owned(),
        events: stats.events,
        streams: stats.streams,
        events_last_minute: stats.events_last_minute,
        rate_per_second,
        categories: stats
            .categories
            .into_iter()
            .map(|c| Category {
                category: c.category,
                streams: c.streams,
                events: c.events,
            })
            .collect(),
        feed_head,
        horizon,
        projections,
    })
}

async fn projection_views(state: &State) -> Result<Vec<ProjectionView>, ApiError> {
    let reports = chronik_postgres::projection_reports(&state.store)
        .await
        .map_err(|e| ApiError::store("cannot read the projections' status", &e))?;
    let mut views = Vec::with_capacity(reports.len());
    for r in reports {
        views.push(projection_view(state, r).await?);
    }
    Ok(views)
}

async fn projection_view(state: &State, r: ProjectionReport) -> Result<ProjectionView, ApiError> {
    let records = chronik_postgres::park_records(&state.store, &r.name)
        .await
        .map_err(|e| ApiError::store("cannot read the parked events", &e))?;
    let parked: Vec<Parked> = records
        .iter()
        .filter(|p| p.state.is_open())
        .map(|p| Parked {
            event_id: p.decision.event_id.to_string(),
            stream_id: p.decision.stream_id.as_str().to_owned(),
            version: p.decision.version.get(),
            state: p.state.as_str(),
            reason: p.decision.reason.clone(),
            decided_by: p.decision.decided_by.clone(),
        })
        .collect();
    let open = records
        .iter()
        .filter(|p| matches!(p.state, ParkState::Pending | ParkState::Skipped))
        .count();
    Ok(ProjectionView {
        rebuildable: state.rebuildable.contains(&r.name),
        position: r.checkpoint.map(|c| c.to_string()),
        events_processed: r.events_processed,
        lag_events: r.lag_events,
        lag_seconds: r.lag_seconds,
        state: r.state,
        owner: r.owner.as_ref().map(instance),
        standbys: r.standbys.iter().map(instance).collect(),
        dead: r.dead.iter().map(instance).collect(),
        locked_by: r.locked_by,
        last_error: r.last_error,
        last_error_at: r.last_error_at.map(time),
        failing_event: r.failing_event.map(|e| e.to_string()),
        attempts: r.attempts,
        parked_open: open as u64,
        parked_total: records.len() as u64,
        parked,
        name: r.name,
    })
}

pub(crate) async fn projections(state: &State) -> Result<Projections, ApiError> {
    let projections = projection_views(state).await?;
    let (_, horizon) = horizon(state).await?;
    Ok(Projections {
        projections,
        rebuilds_enabled: state.admin_token.is_some(),
        held_back_by: if horizon.held_back {
            horizon.blocker
        } else {
            None
        },
    })
}

pub(crate) async fn streams(
    state: &State,
    query: StreamQuery,
    limit: u32,
) -> Result<StreamsPage, ApiError> {
    let found = state
        .store
        .search_streams(&query, limit)
        .await
        .map_err(|e| ApiError::store("cannot list the streams", &e))?;
    let next = (found.len() == limit as usize)
        .then(|| found.last().map(|s| s.stream_id.as_str().to_owned()))
        .flatten();
    Ok(StreamsPage {
        prefix: query.prefix,
        category: query.category,
        after: query.after,
        limit,
        streams: found
            .into_iter()
            .map(|s| StreamRow {
                category: s.stream_id.category().to_owned(),
                stream_id: s.stream_id.as_str().to_owned(),
                version: s.version.get(),
            })
            .collect(),
        next,
    })
}

pub(crate) async fn stream(
    state: &State,
    id: &StreamId,
    from: u64,
    limit: u32,
) -> Result<StreamPage, ApiError> {
    let store = &state.store;
    let version = store
        .stream_version(id)
        .await
        .map_err(|e| ApiError::store("cannot read the stream's version", &e))?;
    if version == Version::ZERO {
        return Err(ApiError::NotFound(format!(
            "stream {:?} has no events in schema {}",
            id.as_str(),
            store.schema()
        )));
    }
    let start = Version::new(from).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let mut events = Vec::new();
    let mut read = store.read_stream(id, start).take(limit as usize);
    while let Some(event) = read.next().await {
        let event = event.map_err(|e| ApiError::store("cannot read the stream", &e))?;
        events.push(EventView::new(state, event));
    }
    let last = events.last().map_or(from.saturating_sub(1), |e| e.version);
    Ok(StreamPage {
        stream_id: id.as_str().to_owned(),
        category: id.category().to_owned(),
        version: version.get(),
        from,
        limit,
        events,
        next_from: (last < version.get()).then_some(last + 1),
    })
}

pub(crate) async fn event(state: &State, id: EventId) -> Result<EventView, ApiError> {
    let found = state
        .store
        .event_by_id(id)
        .await
        .map_err(|e| ApiError::store("cannot look up the event", &e))?
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "no committed event has id {id} in schema {}",
                state.store.schema()
            ))
        })?;
    Ok(EventView::new(state, found))
}

pub(crate) async fn trace(state: &State, id: EventId) -> Result<Trace, ApiError> {
    let found = state
        .store
        .event_by_id(id)
        .await
        .map_err(|e| ApiError::store("cannot look up the event", &e))?
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "no committed event has id {id} in schema {}",
                state.store.schema()
            ))
        })?;
    let Some(correlation) = found.metadata.correlation_id else {
        return Ok(Trace {
            event_id: id.to_string(),
            correlation_id: None,
            events: vec![TraceLine {
                depth: 1,
                parent: None,
                event: EventView::new(state, found),
            }],
        });
    };
    let events = state
        .store
        .correlated(CorrelationId::new(correlation.as_uuid()), MAX_TRACE)
        .await
        .map_err(|e| ApiError::store("cannot read the correlated events", &e))?;
    Ok(Trace {
        event_id: id.to_string(),
        correlation_id: Some(correlation.as_uuid().to_string()),
        events: causal_order(events)
            .into_iter()
            .map(|(depth, parent, event)| TraceLine {
                depth,
                parent: parent.map(|p| p.to_string()),
                event: EventView::new(state, event),
            })
            .collect(),
    })
}

/// `events` (in feed order) depth first: each event recorded by a command, then the
/// events it caused, and so on. A reaction is appended after its cause committed, so a
/// cause comes first in feed order; stored data is not trusted, so every event appears once.
fn causal_order(events: Vec<RecordedEvent>) -> Vec<(usize, Option<EventId>, RecordedEvent)> {
    let ids: HashSet<EventId> = events.iter().map(|e| e.event_id).collect();
    let parent_of = |e: &RecordedEvent| {
        e.metadata
            .causation_id
            .and_then(|c| EventId::new(c.as_uuid()).ok())
            .filter(|p| ids.contains(p) && *p != e.event_id)
    };
    let mut children: HashMap<EventId, Vec<usize>> = HashMap::new();
    let mut roots = Vec::new();
    for (i, e) in events.iter().enumerate() {
        match parent_of(e) {
            Some(p) => children.entry(p).or_default().push(i),
            None => roots.push(i),
        }
    }
    let mut order = Vec::with_capacity(events.len());
    let mut seen = HashSet::new();
    let mut stack: Vec<(usize, usize)> = roots.iter().rev().map(|&i| (1, i)).collect();
    while let Some((depth, i)) = stack.pop() {
        if !seen.insert(i) {
            continue;
        }
        order.push((depth, i));
        if let Some(kids) = children.get(&events[i].event_id) {
            stack.extend(kids.iter().rev().map(|&k| (depth + 1, k)));
        }
    }
    let parents: Vec<Option<EventId>> = events.iter().map(parent_of).collect();
    let mut slots: Vec<Option<RecordedEvent>> = events.into_iter().map(Some).collect();
    order
        .into_iter()
        .filter_map(|(depth, i)| slots[i].take().map(|e| (depth, parents[i], e)))
        .collect()
}
