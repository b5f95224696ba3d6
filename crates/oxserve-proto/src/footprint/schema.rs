//! Every message of the descriptor pool, compiled to what the walk needs: each field's shape, the
//! containers whose element counts are kept, the Rust struct sizes.

use std::collections::HashMap;
use std::mem::size_of;
use std::sync::OnceLock;

use prost_reflect::{DescriptorPool, FieldDescriptor, Kind, MessageDescriptor};

use super::growth;

/// Field numbers looked up in a table rather than searched for.
const DIRECT_NUMBERS: u32 = 256;

/// Repeated fields and maps per message whose element counts are kept; the rest of a message's (none
/// in TensorFlow's protos) are charged per occurrence.
pub(super) const SLOTS: usize = 16;

/// Singular message fields per message that are checked for being written twice; a message's
/// further ones (none in TensorFlow's protos) count as written twice.
const SEEN_BITS: usize = 64;

// `size_of` the generated types a request decodes into: a message's struct is an element of a
// `Vec` or a map bucket. Other messages' sizes are estimated from their descriptors, from above.
macro_rules! rust_sizes {
    ($($message:ty),* $(,)?) => {
        fn rust_sizes() -> HashMap<String, usize> {
            HashMap::from([$((<$message as prost::Name>::full_name(), size_of::<$message>())),*])
        }
    };
}

rust_sizes!(
    crate::tensorflow::serving::PredictRequest,
    crate::tensorflow::serving::predict_request::RequestOptions,
    crate::tensorflow::serving::predict_request::request_options::Handshake,
    crate::tensorflow::serving::PredictStreamedOptions,
    crate::tensorflow::serving::ModelSpec,
    crate::tensorflow::serving::ClassificationRequest,
    crate::tensorflow::serving::RegressionRequest,
    crate::tensorflow::serving::MultiInferenceRequest,
    crate::tensorflow::serving::InferenceTask,
    crate::tensorflow::serving::Input,
    crate::tensorflow::serving::ExampleList,
    crate::tensorflow::serving::ExampleListWithContext,
    crate::tensorflow::serving::GetModelMetadataRequest,
    crate::tensorflow::serving::GetModelStatusRequest,
    crate::tensorflow::serving::ReloadConfigRequest,
    crate::tensorflow::serving::ModelServerConfig,
    crate::tensorflow::serving::ModelConfigList,
    crate::tensorflow::serving::ModelConfig,
    crate::tensorflow::serving::file_system_storage_path_source_config::ServableVersionPolicy,
    crate::tensorflow::serving::file_system_storage_path_source_config::servable_version_policy::Latest,
    crate::tensorflow::serving::file_system_storage_path_source_config::servable_version_policy::All,
    crate::tensorflow::serving::file_system_storage_path_source_config::servable_version_policy::Specific,
    crate::tensorflow::serving::LoggingConfig,
    crate::tensorflow::serving::LogCollectorConfig,
    crate::tensorflow::serving::SamplingConfig,
    crate::tensorflow::serving::PerTaskSamplingConfig,
    crate::tensorflow::TensorProto,
    crate::tensorflow::TensorShapeProto,
    crate::tensorflow::tensor_shape_proto::Dim,
    crate::tensorflow::ResourceHandleProto,
    crate::tensorflow::resource_handle_proto::DtypeAndShape,
    crate::tensorflow::VariantTensorDataProto,
    crate::tensorflow::Example,
    crate::tensorflow::Features,
    crate::tensorflow::Feature,
    crate::tensorflow::BytesList,
    crate::tensorflow::FloatList,
    crate::tensorflow::Int64List,
    prost_types::Any,
);

pub(super) fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| Builder::new(crate::descriptor_pool(), &rust_sizes()).build())
}

/// Every message of the pool, compiled to what the walk needs.
pub(super) struct Schema {
    pub(super) index: HashMap<String, usize>,
    pub(super) messages: Vec<Message>,
}

pub(super) struct Message {
    /// `size_of` its struct; for a map entry, of its `(key, value)` bucket.
    pub(super) size: usize,
    /// By number.
    pub(super) fields: Vec<Field>,
    /// Where in `fields` (plus one; 0 for none) the field numbered as the index is, for the
    /// numbers below `DIRECT_NUMBERS`: the binary search would take most of the walk's time.
    pub(super) by_number: Vec<u16>,
    /// The containers whose element counts are kept per struct, by slot.
    pub(super) containers: Vec<Container>,
}

impl Message {
    pub(super) fn field(&self, number: u32) -> Option<&Field> {
        match self.by_number.get(number as usize) {
            Some(&at) => at.checked_sub(1).map(|at| &self.fields[usize::from(at)]),
            None => {
                let found = self
                    .fields
                    .binary_search_by_key(&number, |field| field.number);
                found.ok().map(|at| &self.fields[at])
            }
        }
    }
}

#[derive(Clone, Copy)]
pub(super) struct Field {
    pub(super) number: u32,
    pub(super) shape: Shape,
}

#[derive(Clone, Copy)]
pub(super) enum Shape {
    /// A scalar, or a `Bytes`: nothing on the heap of its own.
    Inline,
    /// A `String`, or prost-types' `Vec<u8>`: a copy of its bytes.
    Copied,
    /// A singular message: its struct is in its parent's, or boxed where prost boxes it.
    Message {
        message: usize,
        boxed: bool,
        seen_bit: Option<u8>,
    },
    /// A repeated field or a map (whose elements are `Element::Entry`s).
    Repeated {
        element: Element,
        container: Container,
        slot: Option<u8>,
    },
}

#[derive(Clone, Copy)]
pub(super) enum Element {
    Varint,
    /// Its width on the wire.
    Fixed(usize),
    /// A `Bytes`.
    Shared,
    /// A `String` or `Vec<u8>`.
    Copied,
    Message(usize),
    /// A map entry, a message of its key and value.
    Entry(usize),
}

#[derive(Clone, Copy)]
pub(super) enum Container {
    /// A `Vec` of elements of this size.
    Vec { element: usize },
    /// A `HashMap` of buckets of this size.
    Map { bucket: usize },
}

impl Container {
    /// The allocation holding `count` elements, and the old one alive while it last grew.
    pub(super) fn exact(self, count: usize) -> (usize, usize) {
        match self {
            Container::Vec { element } => {
                let min = growth::vec_min_capacity(element);
                let capacity = growth::vec_capacity(count, element);
                let old = if capacity > min { capacity / 2 } else { 0 };
                (
                    capacity.saturating_mul(element),
                    old.saturating_mul(element),
                )
            }
            Container::Map { bucket } => {
                let (buckets, old) = growth::map_buckets(count, bucket);
                let old_bytes = old.map_or(0, |old| growth::map_bytes(old, bucket));
                (growth::map_bytes(buckets, bucket), old_bytes)
            }
        }
    }

    /// An upper bound of the peak of a container whose `count` elements are some of its elements:
    /// the bounds of its occurrences add up to a bound of the whole.
    pub(super) fn per_occurrence(self, count: usize) -> usize {
        match self {
            // Fewer than 2n slots once grown past the minimum, and the old half while growing.
            Container::Vec { element } => count
                .saturating_mul(3)
                .max(growth::vec_min_capacity(element))
                .saturating_mul(element),
            // Fewer than 16/7 n buckets plus their control bytes, and the old half while growing;
            // the constant covers the first table's at most 4 buckets and 31 bytes of control and
            // alignment.
            Container::Map { bucket } => count.saturating_mul(4 * (bucket + 1) + 32),
        }
    }
}

/// Compiles a descriptor pool into a [`Schema`].
struct Builder<'a> {
    descriptors: Vec<MessageDescriptor>,
    index: HashMap<String, usize>,
    rust_sizes: &'a HashMap<String, usize>,
    /// The message types of each message's singular message fields.
    singular: Vec<Vec<usize>>,
    sizes: Vec<Option<usize>>,
}

impl<'a> Builder<'a> {
    fn new(pool: &DescriptorPool, rust_sizes: &'a HashMap<String, usize>) -> Self {
        let descriptors: Vec<MessageDescriptor> = pool.all_messages().collect();
        let index: HashMap<String, usize> = descriptors
            .iter()
            .enumerate()
            .map(|(at, message)| (message.full_name().to_owned(), at))
            .collect();
        let singular = descriptors
            .iter()
            .map(|message| {
                message
                    .fields()
                    .filter(|field| !field.is_list() && !field.is_map())
                    .filter_map(|field| match field.kind() {
                        Kind::Message(child) => Some(index[child.full_name()]),
                        _ => None,
                    })
                    .collect()
            })
            .collect();
        Builder {
            sizes: vec![None; descriptors.len()],
            descriptors,
            index,
            rust_sizes,
            singular,
        }
    }

    fn build(mut self) -> Schema {
        let messages = (0..self.descriptors.len())
            .map(|message| self.compile(message))
            .collect();
        Schema {
            index: self.index,
            messages,
        }
    }

    fn compile(&mut self, message: usize) -> Message {
        let descriptor = self.descriptors[message].clone();
        let mut fields: Vec<FieldDescriptor> = descriptor.fields().collect();
        fields.sort_by_key(FieldDescriptor::number);
        let mut containers = Vec::new();
        let mut seen_bits = 0;
        let fields: Vec<Field> = fields
            .iter()
            .map(|field| {
                let shape = if field.is_list() || field.is_map() {
                    let (element, container) = self.repeated(field);
                    let slot = (containers.len() < SLOTS).then(|| {
                        containers.push(container);
                        (containers.len() - 1) as u8
                    });
                    Shape::Repeated {
                        element,
                        container,
                        slot,
                    }
                } else {
                    match field.kind() {
                        Kind::Message(child) => {
                            let child = self.index[child.full_name()];
                            let seen_bit = (seen_bits < SEEN_BITS).then(|| {
                                seen_bits += 1;
                                (seen_bits - 1) as u8
                            });
                            Shape::Message {
                                message: child,
                                boxed: self.boxed(message, child),
                                seen_bit,
                            }
                        }
                        Kind::String => Shape::Copied,
                        Kind::Bytes if copies_bytes(&descriptor) => Shape::Copied,
                        _ => Shape::Inline,
                    }
                };
                Field {
                    number: field.number(),
                    shape,
                }
            })
            .collect();
        Message {
            size: self.size(message),
            by_number: by_number(&fields),
            fields,
            containers,
        }
    }

    fn repeated(&mut self, field: &FieldDescriptor) -> (Element, Container) {
        if let (true, Kind::Message(entry)) = (field.is_map(), field.kind()) {
            let entry = self.index[entry.full_name()];
            let bucket = self.size(entry);
            return (Element::Entry(entry), Container::Map { bucket });
        }
        let element = match field.kind() {
            Kind::Fixed32 | Kind::Sfixed32 | Kind::Float => Element::Fixed(4),
            Kind::Fixed64 | Kind::Sfixed64 | Kind::Double => Element::Fixed(8),
            Kind::String => Element::Copied,
            Kind::Bytes if copies_bytes(field.parent_message()) => Element::Copied,
            Kind::Bytes => Element::Shared,
            Kind::Message(child) => Element::Message(self.index[child.full_name()]),
            _ => Element::Varint,
        };
        let element_size = self.value_size(field);
        (
            element,
            Container::Vec {
                element: element_size,
            },
        )
    }

    /// Whether prost boxes a singular field of type `child` in `parent`: when `child` contains
    /// `parent` through singular message fields (or is it), its struct would contain itself.
    fn boxed(&self, parent: usize, child: usize) -> bool {
        let mut visited = vec![false; self.descriptors.len()];
        let mut stack = vec![child];
        while let Some(message) = stack.pop() {
            if message == parent {
                return true;
            }
            if !std::mem::replace(&mut visited[message], true) {
                stack.extend(&self.singular[message]);
            }
        }
        false
    }

    /// `size_of` a message's struct: from the table, or estimated from above.
    fn size(&mut self, message: usize) -> usize {
        if let Some(size) = self.sizes[message] {
            return size;
        }
        let descriptor = self.descriptors[message].clone();
        let size = if descriptor.is_map_entry() {
            let key = self.value_size(&descriptor.map_entry_key_field());
            let value = self.value_size(&descriptor.map_entry_value_field());
            (key + value).next_multiple_of(8)
        } else if let Some(&size) = self.rust_sizes.get(descriptor.full_name()) {
            size
        } else {
            self.estimate(message)
        };
        self.sizes[message] = Some(size);
        size
    }

    /// An upper bound of a message's `size_of` from its fields: each at 8-byte alignment, a
    /// singular message in an `Option` (8 bytes more at most), a oneof (or proto3 `optional`) an
    /// enum of its largest field and a tag. Rust orders a struct's fields to need no padding
    /// between them. Boxed fields break the recursion through message types.
    fn estimate(&mut self, message: usize) -> usize {
        let descriptor = self.descriptors[message].clone();
        let mut size = 0;
        for field in descriptor.fields() {
            if field.containing_oneof().is_none() {
                size += self.member_size(message, &field);
            }
        }
        for oneof in descriptor.oneofs() {
            let largest = oneof
                .fields()
                .map(|field| self.member_size(message, &field))
                .max()
                .unwrap_or(0);
            size += 8 + largest;
        }
        size.next_multiple_of(8)
    }

    fn member_size(&mut self, message: usize, field: &FieldDescriptor) -> usize {
        if field.is_map() {
            return size_of::<HashMap<String, String>>();
        }
        if field.is_list() {
            return size_of::<Vec<u8>>();
        }
        match field.kind() {
            Kind::Message(child) => {
                let child = self.index[child.full_name()];
                if self.boxed(message, child) {
                    8
                } else {
                    self.size(child) + 8
                }
            }
            _ => self.value_size(field).next_multiple_of(8),
        }
    }

    /// `size_of` a value of the field's type, as an element of a `Vec` or in a map bucket.
    fn value_size(&mut self, field: &FieldDescriptor) -> usize {
        match field.kind() {
            Kind::Bool => 1,
            Kind::Int32
            | Kind::Uint32
            | Kind::Sint32
            | Kind::Fixed32
            | Kind::Sfixed32
            | Kind::Float
            | Kind::Enum(_) => 4,
            Kind::Int64
            | Kind::Uint64
            | Kind::Sint64
            | Kind::Fixed64
            | Kind::Sfixed64
            | Kind::Double => 8,
            Kind::String => size_of::<String>(),
            Kind::Bytes if copies_bytes(field.parent_message()) => size_of::<Vec<u8>>(),
            Kind::Bytes => size_of::<bytes::Bytes>(),
            Kind::Message(child) => {
                let child = self.index[child.full_name()];
                self.size(child)
            }
        }
    }
}

/// [`Message::by_number`] of fields sorted by number.
fn by_number(fields: &[Field]) -> Vec<u16> {
    let direct = fields
        .iter()
        .take_while(|field| field.number < DIRECT_NUMBERS);
    let len = direct.clone().last().map_or(0, |field| field.number + 1);
    let mut by_number = vec![0; len as usize];
    // Below DIRECT_NUMBERS, `at` fits.
    for (at, field) in direct.enumerate() {
        by_number[field.number as usize] = at as u16 + 1;
    }
    by_number
}

/// Whether a message's `bytes` fields are `Vec<u8>`, copied: prost-types' well-known types are not
/// built with `bytes::Bytes`.
fn copies_bytes(message: &MessageDescriptor) -> bool {
    message.full_name().starts_with("google.protobuf.")
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;

    /// The request types of TF Serving's two services.
    const REQUESTS: [&str; 7] = [
        "tensorflow.serving.PredictRequest",
        "tensorflow.serving.ClassificationRequest",
        "tensorflow.serving.RegressionRequest",
        "tensorflow.serving.MultiInferenceRequest",
        "tensorflow.serving.GetModelMetadataRequest",
        "tensorflow.serving.GetModelStatusRequest",
        "tensorflow.serving.ReloadConfigRequest",
    ];

    /// prost maps the wrapper types to `Option<primitive>`, inline in their parent: no struct.
    fn is_wrapper(name: &str) -> bool {
        name.starts_with("google.protobuf.") && name.ends_with("Value")
    }

    #[test]
    fn every_struct_a_request_decodes_into_has_its_size() {
        let pool = crate::descriptor_pool();
        let sizes = rust_sizes();
        let mut seen = HashSet::new();
        let mut stack: Vec<MessageDescriptor> = REQUESTS
            .iter()
            .map(|name| pool.get_message_by_name(name).unwrap())
            .collect();
        while let Some(message) = stack.pop() {
            if !seen.insert(message.full_name().to_owned()) {
                continue;
            }
            if !message.is_map_entry() && !is_wrapper(message.full_name()) {
                assert!(
                    sizes.contains_key(message.full_name()),
                    "{} has no size in rust_sizes!",
                    message.full_name()
                );
            }
            for field in message.fields() {
                if let Kind::Message(child) = field.kind() {
                    stack.push(child);
                }
            }
        }
    }

    #[test]
    fn estimated_sizes_bound_the_real_ones() {
        let sizes = rust_sizes();
        let mut builder = builder_without_sizes();
        for (name, &size) in &sizes {
            let estimate = builder.estimate(builder.index[name]);
            assert!(estimate >= size, "{name}: estimated {estimate} < {size}");
        }
    }

    fn builder_without_sizes() -> Builder<'static> {
        static NONE: OnceLock<HashMap<String, usize>> = OnceLock::new();
        Builder::new(crate::descriptor_pool(), NONE.get_or_init(HashMap::new))
    }

    #[test]
    fn no_groups() {
        // The walk skips a proto2 group's contents, which prost would decode: it must meet none.
        for message in crate::descriptor_pool().all_messages() {
            for field in message.fields() {
                assert!(!field.is_group(), "{} is a group", field.full_name());
            }
        }
    }
}
