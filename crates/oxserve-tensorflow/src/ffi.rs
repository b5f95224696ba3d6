//! The TensorFlow C API (`tensorflow/c/c_api.h`, `tf_tensor.h`, `tf_tstring.h`, `tf_status.h`),
//! resolved at run time with `dlopen`. This is the only module of the crate with `unsafe` code;
//! everything it exports is safe to use.
//!
//! Ownership rules followed here (from the C API's header comments):
//! - `TF_SessionRun` leaves the input tensors with the caller and hands the output tensors to the
//!   caller; both are deleted by [`OwnedTensor`]'s `Drop`.
//! - `TF_NewTensor` takes ownership of the buffer in every case: it calls the deallocator exactly
//!   once, either when the last reference to the tensor goes away, or at once when it copies the
//!   buffer (unaligned numeric data) or rejects the shape (returning NULL).
//! - `TF_LoadSessionFromSavedModel` does not take ownership of its arguments.
#![allow(unsafe_code)]

use std::alloc::Layout;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::mem::ManuallyDrop;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::ptr::{self, NonNull};
use std::time::Duration;

use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_LOCAL, RTLD_NOW};
use oxserve_core::tensor::element_count;
use oxserve_core::{Code, DType, Error, Result, Tensor, TensorData};
use oxserve_proto::tensorflow::RunOptions;
use prost::Message;

#[cfg(not(target_pointer_width = "64"))]
compile_error!("oxserve-tensorflow assumes a 64-bit target (the TF_TString layout)");

// ---- C types -------------------------------------------------------------------------------

macro_rules! opaque {
    ($($name:ident),*) => {$(
        /// An opaque TensorFlow C API type, only ever used behind a pointer.
        #[allow(non_camel_case_types)]
        #[repr(C)]
        pub struct $name {
            _private: [u8; 0],
            _not_send_sync: std::marker::PhantomData<(*mut u8, std::marker::PhantomPinned)>,
        }
    )*};
}
opaque!(
    TF_Status,
    TF_Graph,
    TF_SessionOptions,
    TF_Session,
    TF_Operation,
    TF_Tensor
);

/// `TF_Buffer` from `tf_buffer.h`.
#[allow(non_camel_case_types)]
#[repr(C)]
pub struct TF_Buffer {
    data: *const c_void,
    length: usize,
    data_deallocator: Option<unsafe extern "C" fn(*mut c_void, usize)>,
}

/// `TF_Output` from `c_api.h`: an operation and the index of one of its outputs.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct TF_Output {
    oper: *mut TF_Operation,
    index: c_int,
}

/// `TF_TString` from `tsl/platform/ctstring_internal.h`: a 24-byte union (small string inline,
/// or size + capacity + heap pointer, or offset, or view) on 64-bit targets, 8-byte aligned.
/// Only ever touched through the `TF_String*` functions.
#[allow(non_camel_case_types)]
#[repr(C, align(8))]
struct TF_TString {
    _raw: [u8; TSTRING_SIZE],
}

const TSTRING_SIZE: usize = 24;
const _: () = assert!(std::mem::size_of::<TF_TString>() == TSTRING_SIZE);

/// Alignment of the string tensor buffers this module allocates: TensorFlow's
/// `EIGEN_MAX_ALIGN_BYTES` on x86-64 builds (string tensors are exempt from TF's alignment
/// check, this only avoids relying on that).
const STRING_BUFFER_ALIGN: usize = 64;

/// `TensorShape::MaxDimensions()`: TF aborts (CHECK) on a shape of higher rank.
const MAX_RANK: usize = 254;

const TF_STRING: c_int = 7;
const TF_OK: c_int = 0;

type Deallocator = unsafe extern "C" fn(data: *mut c_void, len: usize, arg: *mut c_void);

// ---- the library ---------------------------------------------------------------------------

#[cfg(target_os = "macos")]
pub const FRAMEWORK_LIBRARY: &str = "libtensorflow_framework.2.dylib";
#[cfg(target_os = "macos")]
pub const CC_LIBRARY: &str = "libtensorflow_cc.2.dylib";
#[cfg(not(target_os = "macos"))]
pub const FRAMEWORK_LIBRARY: &str = "libtensorflow_framework.so.2";
#[cfg(not(target_os = "macos"))]
pub const CC_LIBRARY: &str = "libtensorflow_cc.so.2";

/// The loaded TensorFlow shared libraries and the C API functions oxserve uses. Created once per
/// process and never dropped (it lives in a `static`), so the libraries are never `dlclose`d and
/// the function pointers stay valid for the life of the process.
pub struct Api {
    // Held only to keep the libraries mapped. `ManuallyDrop`: never `dlclose`d, not even when
    // loading fails half-way (TF's static registrations must not be unloaded).
    _framework: ManuallyDrop<Library>,
    _cc: ManuallyDrop<Library>,
    library_dir: PathBuf,
    version: String,
    default_alignment: usize,

    new_status: unsafe extern "C" fn() -> *mut TF_Status,
    get_code: unsafe extern "C" fn(*const TF_Status) -> c_int,
    message: unsafe extern "C" fn(*const TF_Status) -> *const c_char,
    delete_status: unsafe extern "C" fn(*mut TF_Status),

    new_graph: unsafe extern "C" fn() -> *mut TF_Graph,
    delete_graph: unsafe extern "C" fn(*mut TF_Graph),
    graph_operation_by_name:
        unsafe extern "C" fn(*mut TF_Graph, *const c_char) -> *mut TF_Operation,
    operation_num_outputs: unsafe extern "C" fn(*mut TF_Operation) -> c_int,

    new_session_options: unsafe extern "C" fn() -> *mut TF_SessionOptions,
    set_config: unsafe extern "C" fn(*mut TF_SessionOptions, *const c_void, usize, *mut TF_Status),
    delete_session_options: unsafe extern "C" fn(*mut TF_SessionOptions),

    new_buffer: unsafe extern "C" fn() -> *mut TF_Buffer,
    delete_buffer: unsafe extern "C" fn(*mut TF_Buffer),

    #[allow(clippy::type_complexity)]
    load_session_from_saved_model: unsafe extern "C" fn(
        session_options: *const TF_SessionOptions,
        run_options: *const TF_Buffer,
        export_dir: *const c_char,
        tags: *const *const c_char,
        tags_len: c_int,
        graph: *mut TF_Graph,
        meta_graph_def: *mut TF_Buffer,
        status: *mut TF_Status,
    ) -> *mut TF_Session,
    #[allow(clippy::type_complexity)]
    session_run: unsafe extern "C" fn(
        session: *mut TF_Session,
        run_options: *const TF_Buffer,
        inputs: *const TF_Output,
        input_values: *const *mut TF_Tensor,
        ninputs: c_int,
        outputs: *const TF_Output,
        output_values: *mut *mut TF_Tensor,
        noutputs: c_int,
        target_opers: *const *const TF_Operation,
        ntargets: c_int,
        run_metadata: *mut TF_Buffer,
        status: *mut TF_Status,
    ),
    close_session: unsafe extern "C" fn(*mut TF_Session, *mut TF_Status),
    delete_session: unsafe extern "C" fn(*mut TF_Session, *mut TF_Status),

    allocate_tensor: unsafe extern "C" fn(c_int, *const i64, c_int, usize) -> *mut TF_Tensor,
    new_tensor: unsafe extern "C" fn(
        c_int,
        *const i64,
        c_int,
        *mut c_void,
        usize,
        Deallocator,
        *mut c_void,
    ) -> *mut TF_Tensor,
    delete_tensor: unsafe extern "C" fn(*mut TF_Tensor),
    tensor_data: unsafe extern "C" fn(*const TF_Tensor) -> *mut c_void,
    tensor_byte_size: unsafe extern "C" fn(*const TF_Tensor) -> usize,
    tensor_type: unsafe extern "C" fn(*const TF_Tensor) -> c_int,
    num_dims: unsafe extern "C" fn(*const TF_Tensor) -> c_int,
    dim: unsafe extern "C" fn(*const TF_Tensor, c_int) -> i64,

    string_init: unsafe extern "C" fn(*mut TF_TString),
    string_copy: unsafe extern "C" fn(*mut TF_TString, *const c_char, usize),
    string_get_data_pointer: unsafe extern "C" fn(*const TF_TString) -> *const c_char,
    string_get_size: unsafe extern "C" fn(*const TF_TString) -> usize,
    string_dealloc: unsafe extern "C" fn(*mut TF_TString),
}

/// Opens one library. `dlopen` runs the library's initialisers (TensorFlow's static op and kernel
/// registrations), which is what loading TensorFlow means.
fn open(path: &Path, flags: c_int) -> Result<Library, String> {
    // SAFETY: the path names one of TensorFlow's own shared libraries, whose initialisers only
    // register ops, kernels and platform plugins; they make no demand on the caller. (Which
    // directory to trust is the operator's choice, as with LD_LIBRARY_PATH.) The library is
    // never unloaded (see `Api`), so its termination routines run at process exit only.
    unsafe { Library::open(Some(path.as_os_str()), flags) }.map_err(|e| e.to_string())
}

/// Resolves `name` in `cc` (whose `dlsym` also searches its dependency, the framework library)
/// or else in `framework`.
///
/// # Safety
/// `T` must be the function pointer type that TensorFlow's C headers declare for `name`.
unsafe fn symbol<T: Copy>(cc: &Library, framework: &Library, name: &str) -> Result<T, String> {
    // SAFETY: the caller guarantees that `T` matches the C declaration of `name`.
    let found = unsafe { cc.get::<T>(name) }.or_else(|_| {
        // SAFETY: as above.
        unsafe { framework.get::<T>(name) }
    });
    match found {
        Ok(sym) => Ok(*sym),
        Err(e) => Err(format!("symbol {name} not found: {e}")),
    }
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("version", &self.version)
            .field("library_dir", &self.library_dir)
            .finish_non_exhaustive()
    }
}

impl Api {
    /// Opens `libtensorflow_framework` (RTLD_NOW | RTLD_GLOBAL, so that TensorFlow and any custom
    /// op library share one op registry) and then `libtensorflow_cc` (RTLD_NOW | RTLD_LOCAL: its
    /// many exported C++ symbols, protobuf and absl among them, stay out of the global namespace
    /// where they could clash with other runtimes loaded later), and resolves every function.
    /// The error is a plain description for the caller to wrap.
    pub fn load(dir: &Path) -> Result<Api, String> {
        let framework =
            ManuallyDrop::new(open(&dir.join(FRAMEWORK_LIBRARY), RTLD_NOW | RTLD_GLOBAL)?);
        let cc = ManuallyDrop::new(open(&dir.join(CC_LIBRARY), RTLD_NOW | RTLD_LOCAL)?);

        macro_rules! resolve {
            ($($field:ident = $name:literal),* $(,)?) => {
                Api {
                    $(
                        // SAFETY: each field's type is copied from the declaration of `$name`
                        // in TensorFlow's C headers (c_api.h, tf_tensor.h, tf_tstring.h,
                        // tf_status.h, tf_buffer.h); C enums (TF_Code, TF_DataType) are ints.
                        $field: unsafe { symbol(&cc, &framework, $name)? },
                    )*
                    library_dir: dir.to_path_buf(),
                    version: String::new(),
                    default_alignment: 0,
                    _framework: framework,
                    _cc: cc,
                }
            };
        }
        let version_fn: unsafe extern "C" fn() -> *const c_char =
            // SAFETY: `const char* TF_Version(void)` in c_api.h.
            unsafe { symbol(&cc, &framework, "TF_Version")? };
        let alignment_fn: unsafe extern "C" fn() -> usize =
            // SAFETY: `size_t TF_TensorDefaultAlignment()` in tf_tensor.h.
            unsafe { symbol(&cc, &framework, "TF_TensorDefaultAlignment")? };
        let mut api = resolve! {
            new_status = "TF_NewStatus",
            get_code = "TF_GetCode",
            message = "TF_Message",
            delete_status = "TF_DeleteStatus",
            new_graph = "TF_NewGraph",
            delete_graph = "TF_DeleteGraph",
            graph_operation_by_name = "TF_GraphOperationByName",
            operation_num_outputs = "TF_OperationNumOutputs",
            new_session_options = "TF_NewSessionOptions",
            set_config = "TF_SetConfig",
            delete_session_options = "TF_DeleteSessionOptions",
            new_buffer = "TF_NewBuffer",
            delete_buffer = "TF_DeleteBuffer",
            load_session_from_saved_model = "TF_LoadSessionFromSavedModel",
            session_run = "TF_SessionRun",
            close_session = "TF_CloseSession",
            delete_session = "TF_DeleteSession",
            allocate_tensor = "TF_AllocateTensor",
            new_tensor = "TF_NewTensor",
            delete_tensor = "TF_DeleteTensor",
            tensor_data = "TF_TensorData",
            tensor_byte_size = "TF_TensorByteSize",
            tensor_type = "TF_TensorType",
            num_dims = "TF_NumDims",
            dim = "TF_Dim",
            string_init = "TF_StringInit",
            string_copy = "TF_StringCopy",
            string_get_data_pointer = "TF_StringGetDataPointer",
            string_get_size = "TF_StringGetSize",
            string_dealloc = "TF_StringDealloc",
        };
        // SAFETY: TF_Version takes nothing and returns a static NUL-terminated string (or, to be
        // safe, NULL, which is checked).
        let version = unsafe { version_fn() };
        api.version = if version.is_null() {
            "unknown".to_string()
        } else {
            // SAFETY: non-NULL and NUL-terminated, static for the life of the library.
            unsafe { CStr::from_ptr(version) }
                .to_string_lossy()
                .into_owned()
        };
        // SAFETY: TF_TensorDefaultAlignment takes nothing and returns a number.
        api.default_alignment = unsafe { alignment_fn() };
        Ok(api)
    }

    /// TensorFlow's version, e.g. `2.21.0`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The directory the libraries were loaded from.
    pub fn library_dir(&self) -> &Path {
        &self.library_dir
    }

    /// The alignment TensorFlow wants for tensor buffers (`EIGEN_MAX_ALIGN_BYTES`); input buffers
    /// aligned less are copied by `TF_NewTensor`.
    pub fn default_alignment(&self) -> usize {
        self.default_alignment
    }
}

// ---- RAII wrappers ---------------------------------------------------------------------------

struct Status {
    api: &'static Api,
    ptr: NonNull<TF_Status>,
}

impl Status {
    fn new(api: &'static Api) -> Result<Status> {
        // SAFETY: TF_NewStatus takes nothing; a NULL result is checked.
        let ptr = unsafe { (api.new_status)() };
        NonNull::new(ptr)
            .map(|ptr| Status { api, ptr })
            .ok_or_else(|| Error::resource_exhausted("TF_NewStatus returned NULL"))
    }

    fn raw(&self) -> *mut TF_Status {
        self.ptr.as_ptr()
    }

    /// The status as a `Result`: TF's code (same numbers as `oxserve_core::Code`) and message.
    fn check(&self) -> Result<()> {
        // SAFETY: `ptr` is a live status owned by `self`.
        let code = unsafe { (self.api.get_code)(self.raw()) };
        if code == TF_OK {
            return Ok(());
        }
        // SAFETY: as above; TF_Message returns a NUL-terminated string owned by the status
        // (checked for NULL), copied before the status can change.
        let message = unsafe {
            let message = (self.api.message)(self.raw());
            if message.is_null() {
                String::new()
            } else {
                CStr::from_ptr(message).to_string_lossy().into_owned()
            }
        };
        Err(Error::new(Code::from_i32(code), message))
    }
}

impl Drop for Status {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from TF_NewStatus and is deleted once, here.
        unsafe { (self.api.delete_status)(self.raw()) }
    }
}

struct Graph {
    api: &'static Api,
    ptr: NonNull<TF_Graph>,
}

impl Graph {
    fn new(api: &'static Api) -> Result<Graph> {
        // SAFETY: TF_NewGraph takes nothing; a NULL result is checked.
        let ptr = unsafe { (api.new_graph)() };
        NonNull::new(ptr)
            .map(|ptr| Graph { api, ptr })
            .ok_or_else(|| Error::resource_exhausted("TF_NewGraph returned NULL"))
    }
}

impl Drop for Graph {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from TF_NewGraph and is deleted once, here. A session using the
        // graph is deleted before (see `Session`'s field order); TF would keep the graph alive
        // for it anyway.
        unsafe { (self.api.delete_graph)(self.ptr.as_ptr()) }
    }
}

struct SessionOptions {
    api: &'static Api,
    ptr: NonNull<TF_SessionOptions>,
}

impl SessionOptions {
    fn new(api: &'static Api, config: &[u8]) -> Result<SessionOptions> {
        // SAFETY: TF_NewSessionOptions takes nothing; a NULL result is checked.
        let ptr = unsafe { (api.new_session_options)() };
        let options = NonNull::new(ptr)
            .map(|ptr| SessionOptions { api, ptr })
            .ok_or_else(|| Error::resource_exhausted("TF_NewSessionOptions returned NULL"))?;
        if !config.is_empty() {
            let status = Status::new(api)?;
            // SAFETY: `options` and `status` are live; TF_SetConfig reads `config.len()` bytes
            // from `config` (a serialized ConfigProto) during the call only.
            unsafe {
                (api.set_config)(
                    options.ptr.as_ptr(),
                    config.as_ptr().cast(),
                    config.len(),
                    status.raw(),
                )
            };
            status.check()?;
        }
        Ok(options)
    }
}

impl Drop for SessionOptions {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from TF_NewSessionOptions and is deleted once, here.
        unsafe { (self.api.delete_session_options)(self.ptr.as_ptr()) }
    }
}

struct Buffer {
    api: &'static Api,
    ptr: NonNull<TF_Buffer>,
}

impl Buffer {
    fn new(api: &'static Api) -> Result<Buffer> {
        // SAFETY: TF_NewBuffer takes nothing; a NULL result is checked.
        let ptr = unsafe { (api.new_buffer)() };
        NonNull::new(ptr)
            .map(|ptr| Buffer { api, ptr })
            .ok_or_else(|| Error::resource_exhausted("TF_NewBuffer returned NULL"))
    }

    fn to_vec(&self) -> Result<Vec<u8>> {
        // SAFETY: `ptr` is a live TF_Buffer (layout from tf_buffer.h) owned by `self`.
        let (data, length) = unsafe {
            let buffer = &*self.ptr.as_ptr();
            (buffer.data, buffer.length)
        };
        if length == 0 {
            return Ok(Vec::new());
        }
        if data.is_null() || length > isize::MAX as usize {
            return Err(Error::internal(format!(
                "TensorFlow returned an invalid buffer ({length} bytes at {data:p})"
            )));
        }
        // SAFETY: TF filled the buffer with `length` readable bytes at `data` (non-NULL,
        // checked), which stay valid until the buffer is deleted by `self`'s Drop.
        Ok(unsafe { std::slice::from_raw_parts(data.cast::<u8>(), length) }.to_vec())
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from TF_NewBuffer and is deleted once, here (which also frees the
        // data TF put into it, through its deallocator).
        unsafe { (self.api.delete_buffer)(self.ptr.as_ptr()) }
    }
}

// ---- tensors ---------------------------------------------------------------------------------

/// A TF_Tensor owned by Rust: deleted on drop.
struct OwnedTensor {
    api: &'static Api,
    ptr: NonNull<TF_Tensor>,
}

impl Drop for OwnedTensor {
    fn drop(&mut self) {
        // SAFETY: `ptr` was returned by TF (TF_NewTensor, TF_AllocateTensor or TF_SessionRun's
        // outputs, which the caller owns) and is deleted once, here.
        unsafe { (self.api.delete_tensor)(self.ptr.as_ptr()) }
    }
}

/// The dims of `shape` as TensorFlow wants them, refusing what would make `TensorShape` abort
/// (a CHECK failure kills the process): more than 254 dimensions, or a running product of the
/// dimensions that overflows int64.
fn tf_dims(shape: &[usize]) -> Result<Vec<i64>> {
    if shape.len() > MAX_RANK {
        return Err(Error::invalid_argument(format!(
            "Tensor of rank {} has more than the {MAX_RANK} dimensions TensorFlow supports",
            shape.len()
        )));
    }
    let too_large = || Error::invalid_argument(format!("Tensor shape {shape:?} is too large"));
    let mut count: i64 = 1;
    let mut dims = Vec::with_capacity(shape.len());
    for &dim in shape {
        let dim = i64::try_from(dim).map_err(|_| too_large())?;
        count = count.checked_mul(dim).ok_or_else(too_large)?;
        dims.push(dim);
    }
    Ok(dims)
}

/// Deallocator for numeric buffers handed to `TF_NewTensor`: `arg` is the `Box<TensorData>`
/// that owns them.
unsafe extern "C" fn drop_tensor_data(_data: *mut c_void, _len: usize, arg: *mut c_void) {
    // SAFETY: `arg` is the pointer from `Box::into_raw` in `OwnedTensor::from_tensor`, passed to
    // exactly one TF_NewTensor call; TF calls the deallocator exactly once. Dropping a
    // `TensorData` cannot unwind.
    drop(unsafe { Box::from_raw(arg.cast::<TensorData>()) });
}

/// Deallocator for string buffers handed to `TF_NewTensor`: frees each `TF_TString` (heap copies
/// of long strings) and then the array. `arg` is the `&'static Api`.
unsafe extern "C" fn drop_tstrings(data: *mut c_void, len: usize, arg: *mut c_void) {
    // SAFETY: `arg` is `&'static Api` cast to a pointer in `OwnedTensor::from_strings`; the
    // static lives for the whole process. `data` is the array allocated there with
    // `Layout::from_size_align(len, STRING_BUFFER_ALIGN)` (which succeeded, so the unchecked
    // form below is the same layout), holding `len / TSTRING_SIZE` initialised TF_TStrings.
    // TF calls this exactly once, when the last reference to the buffer goes away.
    unsafe {
        let api = &*arg.cast::<Api>();
        let base = data.cast::<TF_TString>();
        for i in 0..len / TSTRING_SIZE {
            (api.string_dealloc)(base.add(i));
        }
        std::alloc::dealloc(
            data.cast::<u8>(),
            Layout::from_size_align_unchecked(len, STRING_BUFFER_ALIGN),
        );
    }
}

/// A pointer and byte length over the elements of a fixed-size buffer (not strings).
fn raw_parts(data: &mut TensorData) -> Option<(*mut c_void, usize)> {
    match data {
        TensorData::Bool(v) => Some((v.as_mut_ptr().cast(), v.len())),
        TensorData::String(_) => None,
        pod => oxserve_core::for_each_pod!(
            pod,
            v => Some((v.as_mut_ptr().cast(), std::mem::size_of_val(v.as_slice()))),
            _other => None
        ),
    }
}

impl OwnedTensor {
    fn new(api: &'static Api, ptr: *mut TF_Tensor, what: &str) -> Result<OwnedTensor> {
        NonNull::new(ptr)
            .map(|ptr| OwnedTensor { api, ptr })
            .ok_or_else(|| Error::internal(format!("{what} returned NULL")))
    }

    /// Converts a tensor for TF_SessionRun.
    ///
    /// Numeric and bool tensors: `TF_NewTensor` over the tensor's own `Vec`, which TF then owns
    /// (its deallocator drops the `Vec`). No copy when the buffer meets TF's alignment
    /// (`EIGEN_MAX_ALIGN_BYTES`); otherwise TF copies it once into an aligned buffer and frees
    /// ours at once, which costs what `TF_AllocateTensor` + memcpy would. Rust's `bool` is one
    /// byte holding 0 or 1, as TF's.
    ///
    /// Strings: an array of `TF_TString`s (`TF_StringInit` + `TF_StringCopy`, binary-safe) in a
    /// buffer we allocate, whose deallocator `TF_StringDealloc`s every element when the last
    /// reference goes: even a graph that keeps the fed tensor (a queue, a table) never sees
    /// freed strings, and long strings never leak.
    fn from_tensor(api: &'static Api, tensor: Tensor) -> Result<OwnedTensor> {
        let dims = tf_dims(tensor.shape())?;
        let rank = c_int::try_from(dims.len())
            .map_err(|_| Error::invalid_argument("Tensor rank is too large"))?;
        let dtype = tensor.dtype().to_tf();
        let (_, mut data) = tensor.into_parts();
        if data.is_empty() {
            // SAFETY: `dims` holds `rank` valid dims (checked by tf_dims) whose product is 0;
            // TF allocates (and owns) a zero-byte buffer, which needs no initialisation.
            let ptr = unsafe { (api.allocate_tensor)(dtype, dims.as_ptr(), rank, 0) };
            return OwnedTensor::new(api, ptr, "TF_AllocateTensor");
        }
        if let TensorData::String(strings) = data {
            return OwnedTensor::from_strings(api, &dims, rank, &strings);
        }
        let Some((bytes, len)) = raw_parts(&mut data) else {
            return Err(Error::internal("unreachable: string data handled above"));
        };
        let owner = Box::into_raw(Box::new(data));
        // SAFETY: `bytes`/`len` describe the heap buffer of the Vec inside `owner` (moving the
        // Vec into the box does not move its heap buffer), with exactly
        // element_count(dims) * element size bytes, as `Tensor` guarantees. From here on TF owns
        // `owner`: it calls `drop_tensor_data(owner)` exactly once, even when it copies the data
        // or returns NULL. `dims` is valid for `rank` elements and checked by tf_dims.
        let ptr = unsafe {
            (api.new_tensor)(
                dtype,
                dims.as_ptr(),
                rank,
                bytes,
                len,
                drop_tensor_data,
                owner.cast(),
            )
        };
        OwnedTensor::new(api, ptr, "TF_NewTensor")
    }

    fn from_strings(
        api: &'static Api,
        dims: &[i64],
        rank: c_int,
        strings: &[Vec<u8>],
    ) -> Result<OwnedTensor> {
        let len = strings
            .len()
            .checked_mul(TSTRING_SIZE)
            .ok_or_else(|| Error::invalid_argument("String tensor is too large"))?;
        let layout = Layout::from_size_align(len, STRING_BUFFER_ALIGN)
            .map_err(|_| Error::invalid_argument("String tensor is too large"))?;
        // SAFETY: `layout` has a non-zero size (the caller handles empty tensors).
        let base = unsafe { std::alloc::alloc(layout) }.cast::<TF_TString>();
        if base.is_null() {
            return Err(Error::resource_exhausted(format!(
                "Could not allocate {len} bytes for a string tensor"
            )));
        }
        for (i, s) in strings.iter().enumerate() {
            // SAFETY: i < strings.len(), so `base.add(i)` lies inside the allocation and is
            // 8-aligned (64-aligned base, 24-byte stride). TF_StringInit writes an empty string
            // over the uninitialised bytes; TF_StringCopy then copies `s.len()` bytes from `s`
            // (any bytes, NULs included) into it, on the heap when long.
            unsafe {
                let element = base.add(i);
                (api.string_init)(element);
                if !s.is_empty() {
                    (api.string_copy)(element, s.as_ptr().cast(), s.len());
                }
            }
        }
        let api_arg: *const Api = api;
        // SAFETY: `base` holds `strings.len()` initialised TF_TStrings in `len` bytes. TF owns
        // the buffer from here and calls `drop_tstrings(base, len, api)` exactly once (also when
        // it returns NULL); TF_NewTensor never copies TF_STRING buffers. `dims` is valid for
        // `rank` elements and checked by tf_dims.
        let ptr = unsafe {
            (api.new_tensor)(
                TF_STRING,
                dims.as_ptr(),
                rank,
                base.cast(),
                len,
                drop_tstrings,
                api_arg.cast_mut().cast(),
            )
        };
        OwnedTensor::new(api, ptr, "TF_NewTensor")
    }

    /// Copies a tensor TF returned into an oxserve `Tensor`, checking everything TF reports.
    fn to_tensor(&self) -> Result<Tensor> {
        let api = self.api;
        let t = self.ptr.as_ptr();
        // SAFETY: `t` is a live tensor owned by `self` (so for every call below).
        let dtype = DType::from_tf(unsafe { (api.tensor_type)(t) });
        // SAFETY: see above.
        let rank = unsafe { (api.num_dims)(t) };
        let rank = usize::try_from(rank)
            .map_err(|_| Error::internal(format!("TensorFlow returned a tensor of rank {rank}")))?;
        let mut shape = Vec::with_capacity(rank.min(MAX_RANK));
        for i in 0..rank {
            // `i < rank <= c_int::MAX`: the cast is lossless.
            // SAFETY: see above; 0 <= i < TF_NumDims.
            let dim = unsafe { (api.dim)(t, i as c_int) };
            let dim = usize::try_from(dim).map_err(|_| {
                Error::internal(format!(
                    "TensorFlow returned a tensor with dimension {i} of size {dim}"
                ))
            })?;
            shape.push(dim);
        }
        let count = element_count(&shape).map_err(|e| Error::internal(e.message))?;
        // SAFETY: see above.
        let byte_size = unsafe { (api.tensor_byte_size)(t) };
        // SAFETY: see above.
        let data = unsafe { (api.tensor_data)(t) }.cast::<u8>().cast_const();

        let (element_size, is_string) = match dtype {
            DType::String => (TSTRING_SIZE, true),
            other => match other.element_size() {
                Some(size) => (size, false),
                None => {
                    return Err(Error::unimplemented(format!(
                        "Output tensors of type {} are not supported",
                        other.name()
                    )))
                }
            },
        };
        let needed = count.checked_mul(element_size).ok_or_else(|| {
            Error::internal(format!("Output tensor of shape {shape:?} is too large"))
        })?;
        if byte_size < needed {
            return Err(Error::internal(format!(
                "TensorFlow returned a {} tensor of shape {shape:?} in {byte_size} bytes, \
                 {needed} expected",
                dtype.name()
            )));
        }
        if needed > 0
            && (data.is_null()
                || (is_string && data.align_offset(8) != 0)
                || needed > isize::MAX as usize)
        {
            return Err(Error::internal(format!(
                "TensorFlow returned a {} tensor with an invalid data pointer {data:p}",
                dtype.name()
            )));
        }

        let values = if is_string {
            let base = data.cast::<TF_TString>();
            let mut strings = Vec::with_capacity(count);
            for i in 0..count {
                // SAFETY: the buffer holds at least `count` 8-aligned TF_TStrings (size, pointer
                // and alignment checked above), initialised by TF, alive while `self` is.
                let (ptr, size) = unsafe {
                    let element = base.add(i);
                    (
                        (api.string_get_data_pointer)(element),
                        (api.string_get_size)(element),
                    )
                };
                if size == 0 {
                    strings.push(Vec::new());
                    continue;
                }
                if ptr.is_null() || size > isize::MAX as usize {
                    return Err(Error::internal(format!(
                        "TensorFlow returned string {i} of a tensor with size {size} at {ptr:p}"
                    )));
                }
                // SAFETY: TF_StringGetDataPointer/Size describe `size` readable bytes (non-NULL,
                // checked) owned by the tensor, copied before `self` is dropped.
                strings
                    .push(unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), size) }.to_vec());
            }
            TensorData::String(strings)
        } else if needed == 0 {
            TensorData::from_bytes(dtype, &[])?
        } else {
            // SAFETY: TF's buffer holds at least `needed` bytes (checked) at `data` (non-NULL,
            // checked), alive while `self` is; from_bytes copies them (any alignment).
            let bytes = unsafe { std::slice::from_raw_parts(data, needed) };
            TensorData::from_bytes(dtype, bytes)?
        };
        Tensor::new(shape, values).map_err(|e| Error::internal(e.message))
    }
}

// ---- sessions --------------------------------------------------------------------------------

/// One output of one operation of a loaded graph, resolved from a tensor name like `x:0`.
#[derive(Clone, Copy, Debug)]
pub struct Output(TF_Output);

// SAFETY: a TF_Operation* is a pointer to a node of a graph that is never modified after loading
// and outlives every `Output` (they are stored next to the `Session` that owns the graph and only
// used with it); TF only reads through it, under its own locks.
unsafe impl Send for Output {}
// SAFETY: as above.
unsafe impl Sync for Output {}

/// A session over a loaded SavedModel, with the graph it runs.
pub struct Session {
    api: &'static Api,
    session: NonNull<TF_Session>,
    // Dropped after `session` is closed and deleted (see `Drop`).
    graph: Graph,
}

// SAFETY: TensorFlow documents `TF_SessionRun` (DirectSession::Run) as safe to call from many
// threads at once on one session. The graph is read only after loading
// (TF_GraphOperationByName, which locks the graph's mutex, runs only in `load`/`resolve`). The
// session and graph are closed and deleted only in `Drop`, which has exclusive access. Nothing
// else is shared, so moving the session to another thread or sharing `&Session` is sound.
unsafe impl Send for Session {}
// SAFETY: as above.
unsafe impl Sync for Session {}

impl Session {
    /// Loads the SavedModel in `export_dir` with `tags` (TF_LoadSessionFromSavedModel) and
    /// session options built from `config` (a serialized ConfigProto). Returns the session and
    /// the serialized MetaGraphDef.
    pub fn load(
        api: &'static Api,
        export_dir: &Path,
        tags: &[String],
        config: &[u8],
    ) -> Result<(Session, Vec<u8>)> {
        let dir = CString::new(export_dir.as_os_str().as_bytes()).map_err(|_| {
            Error::invalid_argument(format!(
                "SavedModel path {} contains a NUL byte",
                export_dir.display()
            ))
        })?;
        let tags = tags
            .iter()
            .map(|t| CString::new(t.as_bytes()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| Error::invalid_argument("A SavedModel tag contains a NUL byte"))?;
        let tag_ptrs: Vec<*const c_char> = tags.iter().map(|t| t.as_ptr()).collect();
        let ntags = c_int::try_from(tag_ptrs.len())
            .map_err(|_| Error::invalid_argument("Too many SavedModel tags"))?;

        let options = SessionOptions::new(api, config)?;
        let graph = Graph::new(api)?;
        let meta_graph = Buffer::new(api)?;
        let status = Status::new(api)?;
        // SAFETY: every pointer is live for the call: options, graph (new and empty, as
        // required), meta_graph buffer and status are owned here; `dir` and the `ntags` tag
        // strings are NUL-terminated and outlive the call; run_options may be NULL. TF takes
        // ownership of none of them.
        let session = unsafe {
            (api.load_session_from_saved_model)(
                options.ptr.as_ptr(),
                ptr::null(),
                dir.as_ptr(),
                tag_ptrs.as_ptr(),
                ntags,
                graph.ptr.as_ptr(),
                meta_graph.ptr.as_ptr(),
                status.raw(),
            )
        };
        let result = status.check();
        let session = match (NonNull::new(session), result) {
            (Some(session), Ok(())) => Session {
                api,
                session,
                graph,
            },
            (session, result) => {
                if let Some(session) = session {
                    // Not expected (TF returns NULL on error), but never leak a session.
                    drop(Session {
                        api,
                        session,
                        graph,
                    });
                }
                return Err(result.err().unwrap_or_else(|| {
                    Error::internal("TF_LoadSessionFromSavedModel returned NULL")
                }));
            }
        };
        let meta_graph = meta_graph.to_vec()?;
        Ok((session, meta_graph))
    }

    /// Resolves a tensor name (`op:index`, or `op` for index 0) to an output of the graph.
    pub fn resolve(&self, name: &str) -> Result<Output> {
        let (op, index) = parse_tensor_name(name);
        let not_found =
            || Error::invalid_argument(format!("Tensor {name} is not in the model's graph"));
        let index = c_int::try_from(index).map_err(|_| not_found())?;
        let op = CString::new(op).map_err(|_| not_found())?;
        // SAFETY: the graph is live (owned by self) and `op` is NUL-terminated; TF returns NULL
        // when no operation has that name.
        let oper =
            unsafe { (self.api.graph_operation_by_name)(self.graph.ptr.as_ptr(), op.as_ptr()) };
        if oper.is_null() {
            return Err(not_found());
        }
        // SAFETY: `oper` is a live operation of the graph.
        let outputs = unsafe { (self.api.operation_num_outputs)(oper) };
        if index >= outputs {
            return Err(Error::invalid_argument(format!(
                "Tensor {name}: operation {} has {outputs} outputs",
                op.to_string_lossy()
            )));
        }
        Ok(Output(TF_Output { oper, index }))
    }

    /// Runs the graph: feeds `feeds`, fetches `fetches` in order. Safe to call from many threads.
    /// With a `timeout`, TensorFlow cancels the run when it passes (ops already running finish,
    /// loops stop between iterations) and the run fails with DEADLINE_EXCEEDED.
    pub fn run(
        &self,
        feeds: Vec<(Output, Tensor)>,
        fetches: &[Output],
        timeout: Option<Duration>,
    ) -> Result<Vec<Tensor>> {
        let api = self.api;
        let ninputs = c_int::try_from(feeds.len())
            .map_err(|_| Error::invalid_argument("Too many input tensors"))?;
        let noutputs = c_int::try_from(fetches.len())
            .map_err(|_| Error::invalid_argument("Too many output tensors"))?;
        let mut inputs = Vec::with_capacity(feeds.len());
        let mut values = Vec::with_capacity(feeds.len());
        for (output, tensor) in feeds {
            inputs.push(output.0);
            values.push(OwnedTensor::from_tensor(api, tensor)?);
        }
        let value_ptrs: Vec<*mut TF_Tensor> = values.iter().map(|v| v.ptr.as_ptr()).collect();
        let outputs: Vec<TF_Output> = fetches.iter().map(|o| o.0).collect();
        let mut output_values: Vec<*mut TF_Tensor> = vec![ptr::null_mut(); fetches.len()];
        let run_options = timeout.map(|timeout| {
            // Rounded up, and never 0 (which TensorFlow reads as no timeout).
            let millis = timeout.as_nanos().div_ceil(1_000_000).max(1);
            RunOptions {
                timeout_in_ms: i64::try_from(millis).unwrap_or(i64::MAX),
            }
            .encode_to_vec()
        });
        // Borrows `run_options`, which outlives the call; TF only reads it.
        let run_options_buffer = run_options.as_ref().map(|bytes| TF_Buffer {
            data: bytes.as_ptr().cast(),
            length: bytes.len(),
            data_deallocator: None,
        });
        let status = Status::new(api)?;
        // SAFETY: the session is live (owned by self; TF_SessionRun is thread-safe). `inputs`
        // and `value_ptrs` hold `ninputs` entries, `outputs` and `output_values` `noutputs`;
        // every TF_Output points into this session's graph (see `Output`), every input tensor
        // is live and stays ours (TF does not take it). TF writes `noutputs` tensor pointers
        // into `output_values`, which we then own. `run_options_buffer`, when set, points at
        // live bytes. No targets, no run metadata.
        unsafe {
            (api.session_run)(
                self.session.as_ptr(),
                run_options_buffer
                    .as_ref()
                    .map_or(ptr::null(), ptr::from_ref),
                inputs.as_ptr(),
                value_ptrs.as_ptr(),
                ninputs,
                outputs.as_ptr(),
                output_values.as_mut_ptr(),
                noutputs,
                ptr::null(),
                0,
                ptr::null_mut(),
                status.raw(),
            )
        };
        // Take ownership of whatever TF returned before looking at the status, so that every
        // output tensor is deleted on every path.
        let owned: Vec<Option<OwnedTensor>> = output_values
            .into_iter()
            .map(|p| NonNull::new(p).map(|ptr| OwnedTensor { api, ptr }))
            .collect();
        drop(values);
        status.check()?;
        owned
            .iter()
            .enumerate()
            .map(|(i, tensor)| match tensor {
                Some(tensor) => tensor.to_tensor(),
                None => Err(Error::internal(format!(
                    "TF_SessionRun returned no tensor for output {i}"
                ))),
            })
            .collect()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Errors cannot be returned from drop; TF only fails these on an already closed session.
        if let Ok(status) = Status::new(self.api) {
            // SAFETY: the session is live and owned by self; `Drop` has exclusive access, so no
            // run is in flight. It is closed, then deleted, once; the graph is deleted after
            // (field drop order).
            unsafe {
                (self.api.close_session)(self.session.as_ptr(), status.raw());
                (self.api.delete_session)(self.session.as_ptr(), status.raw());
            }
        }
    }
}

/// Splits `op:index` the way TensorFlow's `ParseTensorName` does: the part after the last `:`
/// is the output index when it is all digits; otherwise the whole name is the operation and the
/// index is 0.
pub fn parse_tensor_name(name: &str) -> (&str, u64) {
    if let Some((op, index)) = name.rsplit_once(':') {
        if !index.is_empty() && index.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(index) = index.parse::<u64>() {
                return (op, index);
            }
        }
    }
    (name, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_names_parse_like_tensorflow() {
        assert_eq!(parse_tensor_name("x:0"), ("x", 0));
        assert_eq!(parse_tensor_name("scope/y:12"), ("scope/y", 12));
        assert_eq!(parse_tensor_name("x"), ("x", 0));
        assert_eq!(parse_tensor_name("a:b"), ("a:b", 0));
        assert_eq!(parse_tensor_name("a:"), ("a:", 0));
    }

    /// Checks, against the real library, the ownership rules of TF_NewTensor that
    /// `OwnedTensor::from_tensor` relies on: the deallocator runs exactly once, at once when TF
    /// copies an unaligned buffer or rejects the size, and only at deletion otherwise.
    #[test]
    fn tf_new_tensor_owns_the_buffer_in_every_case() {
        use std::sync::atomic::{AtomicUsize, Ordering};

        static FREED: AtomicUsize = AtomicUsize::new(0);
        unsafe extern "C" fn count(_data: *mut c_void, _len: usize, _arg: *mut c_void) {
            FREED.fetch_add(1, Ordering::SeqCst);
        }
        let Ok(api) = crate::library::load_api(None) else {
            eprintln!("TensorFlow runtime not found: skipped (the integration tests require it)");
            return;
        };
        #[repr(C, align(64))]
        struct Aligned([f32; 32]);
        let mut buffer = Aligned([1.5; 32]);
        let base: *mut f32 = buffer.0.as_mut_ptr();
        let dims = [4i64];
        let new = |data: *mut f32, len: usize| {
            // SAFETY: `data` points to `len` readable bytes of `buffer`, alive until the end of
            // the test; `count` frees nothing; dims holds 1 element.
            unsafe {
                (api.new_tensor)(
                    1,
                    dims.as_ptr(),
                    1,
                    data.cast(),
                    len,
                    count,
                    ptr::null_mut(),
                )
            }
        };

        // Aligned: used in place, freed when deleted.
        let t = new(base, 16);
        assert!(!t.is_null());
        // SAFETY: `t` is a live tensor.
        assert_eq!(unsafe { (api.tensor_data)(t) }, base.cast::<c_void>());
        assert_eq!(FREED.load(Ordering::SeqCst), 0);
        // SAFETY: `t` is live and deleted once.
        unsafe { (api.delete_tensor)(t) };
        assert_eq!(FREED.load(Ordering::SeqCst), 1);

        // Unaligned: copied, ours freed at once.
        // SAFETY: base + 1 is inside `buffer` with 16 readable bytes after it.
        let unaligned = unsafe { base.add(1) };
        let t = new(unaligned, 16);
        assert!(!t.is_null());
        assert_eq!(FREED.load(Ordering::SeqCst), 2);
        // SAFETY: `t` is a live tensor of 16 bytes.
        let data = unsafe { (api.tensor_data)(t) };
        assert_ne!(data, unaligned.cast::<c_void>());
        assert_eq!(data.align_offset(api.default_alignment()), 0);
        // SAFETY: `t` is live and deleted once.
        unsafe { (api.delete_tensor)(t) };
        assert_eq!(FREED.load(Ordering::SeqCst), 2);

        // Too small for the shape: NULL, and ours freed.
        let t = new(base, 8);
        assert!(t.is_null());
        assert_eq!(FREED.load(Ordering::SeqCst), 3);
    }

    /// Images and batches reach TensorFlow without a copy: the allocator the binaries install
    /// (installed for these tests too, in lib.rs) aligns large blocks as TensorFlow wants.
    #[test]
    fn large_tensors_are_used_in_place() {
        let Ok(api) = crate::library::load_api(None) else {
            eprintln!("TensorFlow runtime not found: skipped (the integration tests require it)");
            return;
        };
        assert_eq!(api.default_alignment(), crate::alloc::ALIGN);
        for n in [4_096, 49_152, 150_528, 1 << 20, 6 << 20] {
            let values = vec![0.5f32; n];
            let buffer = values.as_ptr().cast::<c_void>();
            let tensor = Tensor::new(vec![n], TensorData::Float(values)).unwrap();
            let owned = OwnedTensor::from_tensor(api, tensor).unwrap();
            // SAFETY: `owned` is a live tensor.
            let data = unsafe { (api.tensor_data)(owned.ptr.as_ptr()) };
            assert_eq!(data.cast_const(), buffer, "{n} floats");
        }
    }

    #[test]
    fn dims_refuse_what_tensorflow_would_abort_on() {
        assert_eq!(tf_dims(&[2, 3]).unwrap(), vec![2, 3]);
        assert_eq!(tf_dims(&[]).unwrap(), Vec::<i64>::new());
        assert!(tf_dims(&[1usize << 62, 3, 0]).is_err());
        assert!(tf_dims(&[0, 1usize << 62, 1usize << 62]).is_ok());
        assert!(tf_dims(&[usize::MAX]).is_err());
        assert!(tf_dims(&vec![1; 255]).is_err());
        assert!(tf_dims(&vec![1; 254]).is_ok());
    }
}
