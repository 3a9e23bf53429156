//! The service's Prometheus metrics (prometheus-client): builds by status, queue depth, queue
//! wait and stage durations (buckets up to hours: a cold compile is minutes), stage cache hits
//! and misses, cancels, forced kills, registry retries, open event streams, HTTP requests by
//! route and status, and the version (`galley_build_info`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::pipeline::report::CacheUse;
use crate::pipeline::Stage;

type Labels = Vec<(&'static str, String)>;

/// Every metric, registered once.
pub struct Metrics {
    registry: Mutex<Registry>,
    builds: Family<Labels, Counter>,
    pub queue_depth: Gauge,
    pub running: Gauge,
    queue_wait: Histogram,
    build_duration: Histogram,
    stages: Family<Labels, Histogram>,
    pub cancels: Counter,
    pub forced_kills: Counter,
    retries: Counter,
    retries_seen: AtomicU64,
    cache: Family<Labels, Counter>,
    sccache: Family<Labels, Counter>,
    sccache_hit_rate: Histogram,
    remote_uploads: Family<Labels, Counter>,
    /// Event streams open now (set by the API).
    pub open_streams: Gauge,
    http: Family<Labels, Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("galley");
        let builds = Family::<Labels, Counter>::default();
        registry.register("builds", "Builds finished, by status", builds.clone());
        let queue_depth = Gauge::default();
        registry.register("queue_depth", "Builds waiting to run", queue_depth.clone());
        let running = Gauge::default();
        registry.register("builds_running", "Builds running now", running.clone());
        let queue_wait = Histogram::new(exponential_buckets(0.1, 2.0, 14));
        registry.register(
            "queue_wait_seconds",
            "Time from submission to start",
            queue_wait.clone(),
        );
        // 1 s to 2.3 h.
        let build_duration = Histogram::new(exponential_buckets(1.0, 2.0, 14));
        registry.register(
            "build_duration_seconds",
            "Time from start to end of a build",
            build_duration.clone(),
        );
        // 10 ms to 1.5 h: a cold compile lands in a bucket, not in +Inf.
        let stages = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.01, 2.0, 20))
        });
        registry.register(
            "stage_duration_seconds",
            "Duration of successful stages, by stage",
            stages.clone(),
        );
        let cancels = Counter::default();
        registry.register("cancels", "Builds cancelled", cancels.clone());
        let forced_kills = Counter::default();
        registry.register(
            "forced_kills",
            "Cancels that needed SIGKILL after the grace period",
            forced_kills.clone(),
        );
        let retries = Counter::default();
        registry.register(
            "registry_retries",
            "Registry requests retried (429, 5xx, transport errors)",
            retries.clone(),
        );
        let cache = Family::<Labels, Counter>::default();
        registry.register(
            "stage_cache",
            "Stage cache look-ups, by stage, result (hit or miss) and tier (local, remote; none for a miss)",
            cache.clone(),
        );
        let sccache = Family::<Labels, Counter>::default();
        registry.register(
            "sccache_compiles",
            "Compiles through sccache, by result (hit, miss, not_cacheable)",
            sccache.clone(),
        );
        let sccache_hit_rate = Histogram::new([0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0]);
        registry.register(
            "sccache_hit_ratio",
            "Per build with sccache: hits over cacheable compiles (0 to 1)",
            sccache_hit_rate.clone(),
        );
        let remote_uploads = Family::<Labels, Counter>::default();
        registry.register(
            "stage_cache_remote_uploads",
            "Entries offered to the remote stage cache, by result (uploaded, present, failed)",
            remote_uploads.clone(),
        );
        let open_streams = Gauge::default();
        registry.register(
            "sse_streams_open",
            "Event streams open now",
            open_streams.clone(),
        );
        let http = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 16))
        });
        registry.register(
            "http_request_duration_seconds",
            "HTTP requests, by method, route and status (to the response's headers)",
            http.clone(),
        );
        let info = Family::<Labels, Gauge>::default();
        registry.register(
            "build_info",
            "The running galley: 1, with its version",
            info.clone(),
        );
        info.get_or_create(&vec![("version", env!("CARGO_PKG_VERSION").to_string())])
            .set(1);
        Metrics {
            cache,
            sccache,
            sccache_hit_rate,
            remote_uploads,
            open_streams,
            http,
            registry: Mutex::new(registry),
            builds,
            queue_depth,
            running,
            queue_wait,
            build_duration,
            stages,
            cancels,
            forced_kills,
            retries,
            retries_seen: AtomicU64::new(0),
        }
    }

    pub fn build_finished(&self, status: &str, seconds: f64) {
        self.builds
            .get_or_create(&vec![("status", status.to_string())])
            .inc();
        self.build_duration.observe(seconds);
    }

    pub fn queue_wait(&self, seconds: f64) {
        self.queue_wait.observe(seconds);
    }

    pub fn stage_duration(&self, stage: Stage, ms: u64) {
        self.stages
            .get_or_create(&vec![("stage", stage.as_str().to_string())])
            .observe(ms as f64 / 1000.0);
    }

    /// A stage that went through the stage cache: a hit of a tier, or a miss.
    pub fn stage_cache(&self, stage: Stage, used: CacheUse) {
        let (result, tier) = match used {
            CacheUse::Cached => ("hit", "local"),
            CacheUse::Remote => ("hit", "remote"),
            CacheUse::Ran => ("miss", "none"),
        };
        self.cache
            .get_or_create(&vec![
                ("stage", stage.as_str().to_string()),
                ("result", result.to_string()),
                ("tier", tier.to_string()),
            ])
            .inc();
    }

    /// What a finished build's compiles got from sccache, and what its remote tier uploaded.
    pub fn build_caches(&self, report: &crate::pipeline::report::Report) {
        let mut total = crate::toolchain::sccache::SccacheStats::default();
        let mut any = false;
        for p in report.variants.iter().flat_map(|v| &v.platforms) {
            if let Some(s) = &p.sccache {
                any = true;
                total.hits += s.hits;
                total.misses += s.misses;
                total.not_cacheable += s.not_cacheable;
            }
        }
        if any {
            for (result, n) in [
                ("hit", total.hits),
                ("miss", total.misses),
                ("not_cacheable", total.not_cacheable),
            ] {
                self.sccache
                    .get_or_create(&vec![("result", result.to_string())])
                    .inc_by(n);
            }
            self.sccache_hit_rate.observe(total.hit_rate() / 100.0);
        }
        if let Some(r) = &report.remote_cache {
            for (result, n) in [
                ("uploaded", r.uploaded),
                ("present", r.present),
                ("failed", r.upload_failures),
            ] {
                self.remote_uploads
                    .get_or_create(&vec![("result", result.to_string())])
                    .inc_by(n as u64);
            }
        }
    }

    /// One HTTP request answered.
    pub fn http_request(&self, method: &str, route: &str, status: u16, seconds: f64) {
        self.http
            .get_or_create(&vec![
                ("method", method.to_string()),
                ("route", route.to_string()),
                ("status", status.to_string()),
            ])
            .observe(seconds);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        // The registry client counts retries process-wide; carry the new ones over.
        let now = crate::registry::retry::retries();
        let before = self.retries_seen.swap(now, Ordering::Relaxed);
        self.retries.inc_by(now.saturating_sub(before));
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        encode(&mut out, &registry).expect("writing into a String cannot fail");
        out
    }
}
