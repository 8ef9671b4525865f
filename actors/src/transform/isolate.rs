//! One isolate thread: owns a V8 isolate and its context, compiles scripts as ES modules
//! (libraries resolved by name), runs calls under a watchdog (time budget →
//! `terminate_execution`) and a heap cap (near-heap-limit callback, plus a capped array
//! buffer allocator), answers `fetch` from scripts through Keel's outbound client (`crate::outbound`)
//! (or from the pool's [`FetchMocks`], when it has some), and recreates the isolate after
//! any call it had to stop.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, Once};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use super::fair::Job;
use super::{CallError, Libraries, Script, ScriptError, ScriptKind};
use super::{FetchMocks, TransformConfig};
use crate::outbound::{self, HttpConfig};
use crate::telemetry as t;

/// What a try-catch scope caught.
struct Caught<'s> {
    exception: Option<v8::Local<'s, v8::Value>>,
    message: Option<v8::Local<'s, v8::Message>>,
    terminated: bool,
}

/// Takes what the try-catch scope `$tc` caught.
macro_rules! caught {
    ($tc:expr) => {
        Caught {
            exception: $tc.exception(),
            message: $tc.message(),
            terminated: $tc.has_terminated(),
        }
    };
}

const PRELUDE: &str = include_str!("prelude.js");
/// Compiled scripts kept per isolate before the cache is emptied.
const SCRIPT_CACHE: usize = 256;

fn init_v8() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        // ICU's data (time zones, locales): without it `Intl` aborts the process. Aligned
        // as ICU asks; a failure leaves `Intl` unusable but everything else working.
        if let Err(code) = v8::icu::set_common_data_77(deno_core_icudata::ICU_DATA) {
            tracing::warn!(code, "ICU data not loaded: Intl is unavailable to scripts");
        }
        let platform = v8::new_default_platform(0, false).make_shared();
        v8::V8::initialize_platform(platform);
        v8::V8::initialize();
    });
}

/// Starts isolate thread `index`, taking calls from `queue` until it is closed.
pub(super) fn spawn(
    index: usize,
    queue: Arc<super::fair::FairQueue>,
    settings: Arc<TransformConfig>,
) -> std::io::Result<()> {
    init_v8();
    let watchdog = Watchdog::start(index)?;
    std::thread::Builder::new()
        .name(format!("keel-js-{index}"))
        .spawn(move || {
            let fetch = FetchEnv::new(&settings);
            let mut worker = Worker {
                index,
                settings,
                watchdog,
                fetch: Arc::new(fetch),
                runtime: None,
            };
            while let Some((job, _taken)) = queue.take() {
                // A bug on this side must not take the thread (and the pool) down.
                let result =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| worker.call(&job)))
                        .unwrap_or_else(|_| {
                            worker.runtime = None;
                            Err(CallError::InvalidOutput(
                                "internal error while running the script; isolate recreated".into(),
                            ))
                        });
                let _ = job.reply.send(result);
            }
            worker.watchdog.stop();
        })?;
    Ok(())
}

/// Terminates the isolate's running call when its deadline passes.
struct Watchdog {
    state: Mutex<WatchState>,
    cv: Condvar,
}

#[derive(Default)]
struct WatchState {
    deadline: Option<Instant>,
    handle: Option<v8::IsolateHandle>,
    fired: bool,
    stop: bool,
}

impl Watchdog {
    fn start(index: usize) -> std::io::Result<Arc<Self>> {
        let dog = Arc::new(Self {
            state: Mutex::new(WatchState::default()),
            cv: Condvar::new(),
        });
        let d = dog.clone();
        std::thread::Builder::new()
            .name(format!("keel-js-watchdog-{index}"))
            .spawn(move || d.run())?;
        Ok(dog)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WatchState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn run(&self) {
        let mut st = self.lock();
        loop {
            if st.stop {
                return;
            }
            match st.deadline {
                None => st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        if let Some(h) = &st.handle {
                            h.terminate_execution();
                        }
                        st.fired = true;
                        st.deadline = None;
                    } else {
                        st = self
                            .cv
                            .wait_timeout(st, d - now)
                            .unwrap_or_else(|p| p.into_inner())
                            .0;
                    }
                }
            }
        }
    }

    fn set_isolate(&self, handle: v8::IsolateHandle) {
        self.lock().handle = Some(handle);
    }

    fn arm(&self, budget: Duration) {
        let mut st = self.lock();
        st.deadline = Some(Instant::now() + budget);
        st.fired = false;
        self.cv.notify_one();
    }

    /// Stops watching; true when the deadline had passed and the call was terminated.
    fn disarm(&self) -> bool {
        let mut st = self.lock();
        st.deadline = None;
        std::mem::take(&mut st.fired)
    }

    fn stop(&self) {
        let mut st = self.lock();
        st.stop = true;
        st.handle = None;
        self.cv.notify_one();
    }
}

/// What `fetch` needs on the isolate thread: a small runtime and the destinations' client,
/// or the canned answers that replace them.
struct FetchEnv {
    runtime: Option<tokio::runtime::Runtime>,
    client: outbound::HttpClient,
    max_requests: usize,
    max_body: usize,
    mocks: Option<Arc<FetchMocks>>,
}

impl FetchEnv {
    fn new(settings: &TransformConfig) -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| tracing::error!(error = %e, "no runtime for script fetch"))
            .ok();
        let client = outbound::client(&HttpConfig {
            timeout: settings.fetch_timeout,
            connect_timeout: settings.fetch_timeout.min(Duration::from_secs(5)),
            pool_max_idle_per_host: 8,
            allow_private_targets: settings.allow_private_targets,
        });
        Self {
            runtime,
            client,
            max_requests: settings.fetch_max_requests,
            max_body: settings.fetch_max_body,
            mocks: settings.fetch_mocks.clone(),
        }
    }
}

/// Per-isolate slot: the fetch environment and what is left of this call's request budget.
struct FetchSlot {
    env: Arc<FetchEnv>,
    remaining: usize,
    /// The call's deadline: a request never outlives it (the watchdog cannot interrupt a
    /// host call).
    deadline: Instant,
}

/// Per-isolate slot: libraries the module being compiled may import, and modules already
/// compiled for them (by name and source).
#[derive(Default)]
struct ModuleSlot {
    libraries: Arc<Libraries>,
    compiled: HashMap<(String, u64), v8::Global<v8::Module>>,
}

/// Shared with the near-heap-limit callback for the isolate's life.
struct HeapGuard {
    handle: v8::IsolateHandle,
    hit: AtomicBool,
}

extern "C" fn near_heap_limit(data: *mut c_void, current: usize, _initial: usize) -> usize {
    // SAFETY: `data` is the `HeapGuard` boxed in `Runtime`, which outlives the isolate.
    let guard = unsafe { &*(data as *const HeapGuard) };
    guard.hit.store(true, Ordering::SeqCst);
    guard.handle.terminate_execution();
    // Room to unwind: the call is stopped and the isolate dropped right after.
    current.saturating_mul(2)
}

/// Array buffer memory counts against the heap cap too.
struct BufferBudget {
    used: AtomicUsize,
    cap: usize,
}

impl BufferBudget {
    fn reserve(&self, n: usize) -> bool {
        let mut cur = self.used.load(Ordering::Relaxed);
        loop {
            let next = match cur.checked_add(n) {
                Some(next) if next <= self.cap => next,
                _ => return false,
            };
            match self
                .used
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }
}

unsafe extern "C" fn buf_allocate(budget: &BufferBudget, n: usize) -> *mut c_void {
    if !budget.reserve(n) {
        return std::ptr::null_mut();
    }
    Box::into_raw(vec![0u8; n].into_boxed_slice()) as *mut u8 as *mut c_void
}

unsafe extern "C" fn buf_allocate_uninit(budget: &BufferBudget, n: usize) -> *mut c_void {
    // Zeroed anyway: scripts must never see another allocation's bytes.
    unsafe { buf_allocate(budget, n) }
}

unsafe extern "C" fn buf_free(budget: &BufferBudget, data: *mut c_void, n: usize) {
    budget.used.fetch_sub(n, Ordering::AcqRel);
    // SAFETY: allocated by `buf_allocate` with this length.
    drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(data as *mut u8, n)) });
}

unsafe extern "C" fn buf_drop(budget: *const BufferBudget) {
    // SAFETY: the pointer came from `Arc::into_raw` when the allocator was made.
    drop(unsafe { Arc::from_raw(budget) });
}

static BUFFER_VTABLE: v8::RustAllocatorVtable<BufferBudget> = v8::RustAllocatorVtable {
    allocate: buf_allocate,
    allocate_uninitialized: buf_allocate_uninit,
    free: buf_free,
    drop: buf_drop,
};

/// An isolate with its context and compiled scripts. Field order is drop order: handles
/// go before the isolate, the heap guard after it.
struct Runtime {
    scripts: HashMap<u64, v8::Global<v8::Function>>,
    bind: v8::Global<v8::Function>,
    context: v8::Global<v8::Context>,
    isolate: v8::OwnedIsolate,
    _heap: Box<HeapGuard>,
}

struct Worker {
    index: usize,
    settings: Arc<TransformConfig>,
    watchdog: Arc<Watchdog>,
    fetch: Arc<FetchEnv>,
    runtime: Option<Runtime>,
}

impl Worker {
    fn call(&mut self, job: &Job) -> Result<String, CallError> {
        if self.runtime.is_none() {
            self.runtime = Some(self.new_runtime().map_err(|message| CallError::Load {
                script: "prelude".into(),
                message,
            })?);
        }
        let rt = self.runtime.as_mut().expect("runtime just made");
        rt.isolate.set_slot(FetchSlot {
            env: self.fetch.clone(),
            remaining: self.fetch.max_requests,
            deadline: Instant::now() + self.settings.call_timeout,
        });
        rt._heap.hit.store(false, Ordering::SeqCst);
        self.watchdog.arm(self.settings.call_timeout);
        let result = run(rt, job);
        let fired = self.watchdog.disarm();
        let heap_hit = rt._heap.hit.load(Ordering::SeqCst);
        let used = rt.isolate.get_heap_statistics().used_heap_size();
        metrics::gauge!(t::TRANSFORM_HEAP_USED_BYTES, "isolate" => self.index.to_string())
            .set(used as f64);
        let stopped = if heap_hit {
            Some(CallError::Heap(self.settings.heap_limit_bytes >> 20))
        } else if fired {
            Some(CallError::Timeout(self.settings.call_timeout))
        } else {
            None
        };
        if rt.scripts.len() > SCRIPT_CACHE {
            rt.scripts.clear();
        }
        let Some(e) = stopped else {
            return result;
        };
        // A stopped isolate may be in any state: start afresh. A call that finished just
        // as it was stopped keeps its (complete) answer.
        self.runtime = None;
        metrics::counter!(t::TRANSFORM_ISOLATE_RESTARTS_TOTAL, "reason" => e.reason()).increment(1);
        match result {
            Ok(text) => Ok(text),
            Err(_) => {
                tracing::warn!(script = %job.script.name, error = %e, "script stopped; isolate recreated");
                Err(e)
            }
        }
    }

    fn new_runtime(&self) -> Result<Runtime, String> {
        let budget = Arc::new(BufferBudget {
            used: AtomicUsize::new(0),
            cap: self.settings.heap_limit_bytes,
        });
        // SAFETY: the pointer is an `Arc<BufferBudget>` released by `buf_drop`, matching
        // the vtable's handle type.
        let allocator = unsafe { v8::new_rust_allocator(Arc::into_raw(budget), &BUFFER_VTABLE) };
        let params = v8::CreateParams::default()
            .heap_limits(0, self.settings.heap_limit_bytes)
            .array_buffer_allocator(allocator);
        let mut isolate = v8::Isolate::new(params);
        isolate.set_microtasks_policy(v8::MicrotasksPolicy::Explicit);
        let heap = Box::new(HeapGuard {
            handle: isolate.thread_safe_handle(),
            hit: AtomicBool::new(false),
        });
        isolate.add_near_heap_limit_callback(
            near_heap_limit,
            &*heap as *const HeapGuard as *mut c_void,
        );
        self.watchdog.set_isolate(isolate.thread_safe_handle());
        isolate.set_slot(ModuleSlot::default());
        let (context, bind) = {
            v8::scope!(let scope, &mut isolate);
            let context = v8::Context::new(scope, Default::default());
            let scope = &mut v8::ContextScope::new(scope, context);
            let global = context.global(scope);
            let name = v8::String::new(scope, "__keel_host_fetch").ok_or("no string")?;
            let f = v8::Function::new(scope, host_fetch).ok_or("no function")?;
            global.set(scope, name.into(), f.into());
            let name = v8::String::new(scope, "__keel_host_digest").ok_or("no string")?;
            let f = v8::Function::new(scope, host_digest).ok_or("no function")?;
            global.set(scope, name.into(), f.into());
            v8::tc_scope!(let tc, scope);
            let source = v8::String::new(tc, PRELUDE).ok_or("no string")?;
            let script = v8::Script::compile(tc, source, None).ok_or_else(|| {
                let c = caught!(tc);
                exception_text(tc, c)
            })?;
            script.run(tc).ok_or_else(|| {
                let c = caught!(tc);
                exception_text(tc, c)
            })?;
            let name = v8::String::new(tc, "__keel_bind").ok_or("no string")?;
            let bind = global
                .get(tc, name.into())
                .and_then(|v| v8::Local::<v8::Function>::try_from(v).ok())
                .ok_or("the prelude defines no __keel_bind")?;
            (v8::Global::new(tc, context), v8::Global::new(tc, bind))
        };
        Ok(Runtime {
            scripts: HashMap::new(),
            bind,
            context,
            isolate,
            _heap: heap,
        })
    }
}

/// Compiles (or takes from the cache) and calls the job's script; returns the answer text.
fn run(rt: &mut Runtime, job: &Job) -> Result<String, CallError> {
    let Runtime {
        scripts,
        bind,
        context,
        isolate,
        ..
    } = rt;
    v8::scope!(let scope, isolate);
    let context = v8::Local::new(scope, &*context);
    let scope = &mut v8::ContextScope::new(scope, context);
    let func = match scripts.get(&job.script.id()) {
        Some(f) => v8::Local::new(scope, f),
        None => {
            let bind = v8::Local::new(scope, &*bind);
            let f = compile(scope, bind, &job.script).map_err(|message| CallError::Load {
                script: job.script.path.display().to_string(),
                message,
            })?;
            scripts.insert(job.script.id(), v8::Global::new(scope, f));
            f
        }
    };
    v8::tc_scope!(let tc, scope);
    let input = v8::String::new(tc, &job.input)
        .ok_or_else(|| CallError::InvalidOutput("the batch is too large for one call".into()))?;
    let mut args: Vec<v8::Local<v8::Value>> = vec![input.into()];
    if let Some(d) = &job.destination {
        args.push(
            v8::String::new(tc, d)
                .ok_or_else(|| CallError::InvalidOutput("destination too large".into()))?
                .into(),
        );
    }
    if let Some(entry) = job.entry {
        if job.destination.is_none() {
            args.push(v8::undefined(tc).into());
        }
        args.push(
            v8::String::new(tc, entry)
                .ok_or_else(|| CallError::InvalidOutput("no string".into()))?
                .into(),
        );
    }
    let recv = v8::undefined(tc).into();
    let Some(mut value) = func.call(tc, recv, &args) else {
        return Err({
            let c = caught!(tc);
            thrown(tc, c)
        });
    };
    if let Ok(promise) = v8::Local::<v8::Promise>::try_from(value) {
        tc.perform_microtask_checkpoint();
        if tc.has_terminated() {
            return Err({
                let c = caught!(tc);
                thrown(tc, c)
            });
        }
        match promise.state() {
            v8::PromiseState::Fulfilled => value = promise.result(tc),
            v8::PromiseState::Rejected => {
                let reason = promise.result(tc);
                return Err(CallError::Exception(error_of(tc, reason)));
            }
            v8::PromiseState::Pending => return Err(CallError::Exception(ScriptError {
                message:
                    "the script's promise never settled (it awaits something that never resolves)"
                        .into(),
                stack: None,
                status: None,
                drop: false,
            })),
        }
    }
    if !value.is_string() {
        return Err(CallError::InvalidOutput("the call answered no JSON".into()));
    }
    Ok(value.to_rust_string_lossy(tc))
}

/// Compiles `script` as an ES module, evaluates it and binds its entry point.
fn compile<'s>(
    scope: &mut v8::PinScope<'s, '_>,
    bind: v8::Local<'s, v8::Function>,
    script: &Script,
) -> Result<v8::Local<'s, v8::Function>, String> {
    if let Some(slot) = scope.get_slot_mut::<ModuleSlot>() {
        slot.libraries = script.libraries.clone();
    }
    v8::tc_scope!(let tc, scope);
    let module = compile_module(tc, &script.path.display().to_string(), &script.source)
        .ok_or_else(|| {
            let c = caught!(tc);
            exception_text(tc, c)
        })?;
    if module.instantiate_module(tc, resolve_library) != Some(true) {
        return Err({
            let c = caught!(tc);
            exception_text(tc, c)
        });
    }
    let evaluated = module.evaluate(tc);
    tc.perform_microtask_checkpoint();
    if evaluated.is_none() || module.get_status() == v8::ModuleStatus::Errored {
        if tc.has_caught() {
            return Err({
                let c = caught!(tc);
                exception_text(tc, c)
            });
        }
        let e = module.get_exception();
        return Err(error_of(tc, e).to_string());
    }
    let ns = module.get_module_namespace();
    let kind = match script.kind {
        ScriptKind::Transformation => "transformation",
        ScriptKind::Destination => "destination",
    };
    let kind = v8::String::new(tc, kind).ok_or("no string")?;
    let recv = v8::undefined(tc).into();
    let bound = bind.call(tc, recv, &[ns, kind.into()]).ok_or_else(|| {
        let c = caught!(tc);
        exception_text(tc, c)
    })?;
    v8::Local::<v8::Function>::try_from(bound).map_err(|_| "no entry point".to_string())
}

fn compile_module<'s>(
    scope: &mut v8::PinScope<'s, '_>,
    name: &str,
    source: &str,
) -> Option<v8::Local<'s, v8::Module>> {
    let source = v8::String::new(scope, source)?;
    let name = v8::String::new(scope, name)?;
    let origin = v8::ScriptOrigin::new(
        scope,
        name.into(),
        0,
        0,
        false,
        -1,
        None,
        false,
        false,
        true,
        None,
    );
    let mut src = v8::script_compiler::Source::new(source, Some(&origin));
    v8::script_compiler::compile_module(scope, &mut src)
}

/// Resolves `import … from "<name>"` to the library `<name>` (a `.js` suffix and a `./`
/// prefix are ignored).
fn resolve_library<'s>(
    context: v8::Local<'s, v8::Context>,
    specifier: v8::Local<'s, v8::String>,
    _attributes: v8::Local<'s, v8::FixedArray>,
    _referrer: v8::Local<'s, v8::Module>,
) -> Option<v8::Local<'s, v8::Module>> {
    // SAFETY: called by V8 during instantiation, inside the context it passes.
    v8::callback_scope!(unsafe scope, context);
    let spec = specifier.to_rust_string_lossy(scope);
    let name = spec
        .trim_start_matches("./")
        .trim_end_matches(".js")
        .to_owned();
    let found = scope.get_slot::<ModuleSlot>().and_then(|slot| {
        slot.libraries.get(&name).map(|src| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            std::hash::Hash::hash(src, &mut h);
            let key = (name.clone(), std::hash::Hasher::finish(&h));
            (key.clone(), src.clone(), slot.compiled.get(&key).cloned())
        })
    });
    let Some((key, source, cached)) = found else {
        let msg = v8::String::new(
            scope,
            &format!("cannot import {spec:?}: no library named {name:?} in transformer-scripts/libraries"),
        )?;
        let e = v8::Exception::error(scope, msg);
        scope.throw_exception(e);
        return None;
    };
    if let Some(m) = cached {
        return Some(v8::Local::new(scope, &m));
    }
    let module = compile_module(scope, &format!("library:{name}"), &source)?;
    let global = v8::Global::new(scope, module);
    if let Some(slot) = scope.get_slot_mut::<ModuleSlot>() {
        slot.compiled.insert(key, global);
    }
    Some(module)
}

/// `__keel_host_digest(algorithm, data, key, encoding)` → the digest of the UTF-8 bytes of
/// `data` as lower-case hex (or `"base64"`, `"base64url"`): `identity`, `sha256`, `sha512`,
/// `sha1`, `md5`, `hmac-sha256` / `hmac-sha1` keyed with `key`, or `rsa-sha256` signed with
/// the PKCS#8 PEM key `key`. Throws on an unknown algorithm or a bad key.
fn host_digest(
    scope: &mut v8::PinScope,
    args: v8::FunctionCallbackArguments,
    mut rv: v8::ReturnValue<v8::Value>,
) {
    let algorithm = args.get(0).to_rust_string_lossy(scope);
    let data = args.get(1).to_rust_string_lossy(scope);
    let key = args.get(2);
    let key = (!key.is_null_or_undefined()).then(|| key.to_rust_string_lossy(scope));
    let encoding = args.get(3).to_rust_string_lossy(scope);
    match super::digest::digest(
        &algorithm,
        data.as_bytes(),
        key.as_deref().map(str::as_bytes),
    ) {
        Ok(bytes) => {
            let text = match encoding.as_str() {
                "base64" => super::digest::base64(&bytes),
                "base64url" => super::digest::base64url(&bytes),
                _ => super::digest::hex(&bytes),
            };
            if let Some(s) = v8::String::new(scope, &text) {
                rv.set(s.into());
            }
        }
        Err(message) => {
            if let Some(m) = v8::String::new(scope, &message) {
                let e = v8::Exception::type_error(scope, m);
                scope.throw_exception(e);
            }
        }
    }
}

/// `__keel_host_fetch(url, optionsJson)` → JSON `{status, headers, body}` or `{error}`.
fn host_fetch(
    scope: &mut v8::PinScope,
    args: v8::FunctionCallbackArguments,
    mut rv: v8::ReturnValue<v8::Value>,
) {
    let url = args.get(0).to_rust_string_lossy(scope);
    let options: Map<String, Value> =
        serde_json::from_str(&args.get(1).to_rust_string_lossy(scope)).unwrap_or_default();
    let answer = match scope.get_slot_mut::<FetchSlot>() {
        None => serde_json::json!({"error": "fetch is unavailable"}),
        Some(slot) if slot.remaining == 0 => serde_json::json!({
            "error": format!("fetch refused: this call already made its {} requests", slot.env.max_requests)
        }),
        Some(slot) => {
            slot.remaining -= 1;
            let env = slot.env.clone();
            let left = slot.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                serde_json::json!({"error": "fetch refused: the call's time budget is spent"})
            } else {
                fetch_now(&env, &url, &options, left)
            }
        }
    };
    if let Some(s) = v8::String::new(scope, &answer.to_string()) {
        rv.set(s.into());
    }
}

fn fetch_now(env: &FetchEnv, url: &str, options: &Map<String, Value>, left: Duration) -> Value {
    if let Some(mocks) = &env.mocks {
        return fetch_mocked(mocks, url, options);
    }
    let Some(runtime) = &env.runtime else {
        return serde_json::json!({"error": "fetch is unavailable"});
    };
    let method = options
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or("GET");
    let headers = match options.get("headers") {
        Some(Value::Object(h)) => h.clone(),
        _ => Map::new(),
    };
    let body = options
        .get("body")
        .and_then(Value::as_str)
        .map(str::to_owned);
    metrics::counter!(t::TRANSFORM_FETCHES_TOTAL).increment(1);
    let request = outbound::fetch(&env.client, method, url, &headers, body, env.max_body);
    // The timer must be made inside the runtime.
    match runtime.block_on(async { tokio::time::timeout(left, request).await }) {
        Ok(Ok(res)) => serde_json::to_value(res).unwrap_or(Value::Null),
        Ok(Err(error)) => serde_json::json!({ "error": error }),
        Err(_) => {
            serde_json::json!({ "error": "fetch timed out at the end of the call's time budget" })
        }
    }
}

/// `fetch` answered from canned answers: the matching entry's response, or `{error}`
/// naming the method and URL no entry matched.
fn fetch_mocked(mocks: &FetchMocks, url: &str, options: &Map<String, Value>) -> Value {
    let method = options
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or("GET");
    let headers = match options.get("headers") {
        Some(Value::Object(h)) => h.clone(),
        _ => Map::new(),
    };
    let body = options.get("body").and_then(Value::as_str);
    match mocks.answer(method, url, &headers, body) {
        Ok(res) => serde_json::to_value(res).unwrap_or(Value::Null),
        Err(error) => serde_json::json!({ "error": error }),
    }
}

/// A caught exception as text with its location.
fn exception_text<'s>(scope: &mut v8::PinScope<'s, '_>, caught: Caught<'s>) -> String {
    if caught.terminated {
        return "execution terminated".into();
    }
    let Some(exception) = caught.exception else {
        return "unknown error".into();
    };
    let mut text = error_of(scope, exception).to_string();
    if let Some(message) = caught.message {
        let file = message
            .get_script_resource_name(scope)
            .map(|n| n.to_rust_string_lossy(scope))
            .unwrap_or_default();
        let line = message.get_line_number(scope).unwrap_or(0);
        if !file.is_empty() && !text.contains(&format!("{file}:{line}")) {
            text = format!("{file}:{line}: {text}");
        }
    }
    text
}

/// A thrown value as a script error (`Name: message`, stack, status).
fn error_of<'s>(scope: &mut v8::PinScope<'s, '_>, value: v8::Local<'s, v8::Value>) -> ScriptError {
    let message = value.to_rust_string_lossy(scope);
    let mut err = ScriptError {
        message,
        stack: None,
        status: None,
        drop: false,
    };
    if let Ok(obj) = v8::Local::<v8::Object>::try_from(value) {
        if let Some(stack) = property(scope, obj, "stack").filter(|s| s.is_string()) {
            err.stack = Some(stack.to_rust_string_lossy(scope));
        }
        for key in ["status", "statusCode"] {
            if let Some(n) = property(scope, obj, key).filter(|s| s.is_number()) {
                err.status = n
                    .number_value(scope)
                    .filter(|n| (100.0..600.0).contains(n))
                    .map(|n| n as u16);
                break;
            }
        }
    }
    err
}

fn property<'s>(
    scope: &mut v8::PinScope<'s, '_>,
    obj: v8::Local<'s, v8::Object>,
    key: &str,
) -> Option<v8::Local<'s, v8::Value>> {
    let k = v8::String::new(scope, key)?;
    obj.get(scope, k.into())
}

/// The error of a call that returned nothing: terminated (budget or heap) or thrown.
fn thrown<'s>(scope: &mut v8::PinScope<'s, '_>, caught: Caught<'s>) -> CallError {
    if caught.terminated {
        // The worker sees the watchdog or heap flag and reports which.
        return CallError::Exception(ScriptError {
            message: "execution terminated".into(),
            stack: None,
            status: None,
            drop: false,
        });
    }
    match caught.exception {
        Some(e) => CallError::Exception(error_of(scope, e)),
        None => CallError::Exception(ScriptError {
            message: "the script failed without an exception".into(),
            stack: None,
            status: None,
            drop: false,
        }),
    }
}
