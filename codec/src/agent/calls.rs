//! Call signatures and the per-connection table interning them as call ids.

use std::collections::HashMap;
use std::hash::BuildHasher;

use foldhash::quality::RandomState;

use super::AgentError;

/// Most signatures one connection may define (call ids are `0..MAX_CALLS`).
pub const MAX_CALLS: usize = 4096;

/// Longest interface, method, version or group name, in bytes. The JVM allows names of
/// up to 64 KiB, but real Java class and method names are well under 200 bytes (and
/// versions and groups a few): 1 KiB leaves room for any real name while a peer naming
/// ever new 64 KiB strings could otherwise make this side keep a gigabyte.
pub const MAX_NAME_LEN: usize = 1024;

/// Longest parameter-types descriptor, in bytes: 4 KiB is some forty parameters of
/// 100-byte class names.
pub const MAX_TYPES_LEN: usize = 4096;

/// Bytes the signatures of one table may hold, as [`SignatureRef::charge`] counts them:
/// every one of [`MAX_CALLS`] signatures of typical size (a few hundred bytes) fits.
pub const MAX_TABLE_BYTES: usize = 1 << 20;

/// What a stored signature costs beyond its strings: five `String` headers, the
/// table's slot and index entry, and the allocator's rounding.
const SIGNATURE_OVERHEAD: usize = 160;

/// What a call invokes, borrowed: the key a DEFINE frame binds to a call id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SignatureRef<'a> {
    /// Service (interface) name, e.g. `com.example.Hello`.
    pub service: &'a str,
    /// Method name.
    pub method: &'a str,
    /// Parameter types as JVM descriptors, e.g. `Ljava/lang/String;`.
    pub parameter_types: &'a str,
    /// Service version (empty if none).
    pub version: &'a str,
    /// Service group (empty if none).
    pub group: &'a str,
}

impl SignatureRef<'_> {
    /// Whether every field is within [`MAX_NAME_LEN`] / [`MAX_TYPES_LEN`].
    ///
    /// # Errors
    ///
    /// [`AgentError::SignatureTooLong`] otherwise.
    pub fn check(&self) -> Result<(), AgentError> {
        let names = [self.service, self.method, self.version, self.group];
        if names.iter().any(|n| n.len() > MAX_NAME_LEN)
            || self.parameter_types.len() > MAX_TYPES_LEN
        {
            return Err(AgentError::SignatureTooLong);
        }
        Ok(())
    }

    /// The bytes this signature counts for in a [`CallTable`].
    pub fn charge(&self) -> usize {
        SIGNATURE_OVERHEAD
            + self.service.len()
            + self.method.len()
            + self.parameter_types.len()
            + self.version.len()
            + self.group.len()
    }

    /// An owned copy.
    pub fn to_owned(&self) -> Signature {
        Signature {
            service: self.service.to_owned(),
            method: self.method.to_owned(),
            parameter_types: self.parameter_types.to_owned(),
            version: self.version.to_owned(),
            group: self.group.to_owned(),
        }
    }
}

/// What a call invokes, owned: kept in a [`CallTable`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Signature {
    /// Service (interface) name.
    pub service: String,
    /// Method name.
    pub method: String,
    /// Parameter types as JVM descriptors.
    pub parameter_types: String,
    /// Service version (empty if none).
    pub version: String,
    /// Service group (empty if none).
    pub group: String,
}

impl Signature {
    /// A borrowed view, for [`CallTable::intern`] and the encoders.
    pub fn as_ref(&self) -> SignatureRef<'_> {
        SignatureRef {
            service: &self.service,
            method: &self.method,
            parameter_types: &self.parameter_types,
            version: &self.version,
            group: &self.group,
        }
    }
}

/// The call ids of one connection.
///
/// The sending side calls [`intern`](Self::intern) per request (a hash lookup; allocation
/// only for a new signature) and sends a DEFINE frame when it reports a new id. The
/// receiving side calls [`define`](Self::define) for each DEFINE frame and
/// [`get`](Self::get) per request. Bounded by [`MAX_CALLS`] signatures and
/// [`MAX_TABLE_BYTES`] bytes, each signature by [`SignatureRef::check`]; dropping the
/// table frees them all.
#[derive(Debug, Clone, Default)]
pub struct CallTable {
    sigs: Vec<Option<Signature>>,
    /// Signature hash -> ids with that hash (collisions are compared field by field).
    index: HashMap<u64, Vec<u32>, RandomState>,
    hasher: RandomState,
    next: u32,
    defined: usize,
    /// The signatures' [`SignatureRef::charge`], summed.
    bytes: usize,
    /// The id [`intern`](Self::intern) found or made last: a connection's calls mostly
    /// repeat one signature, which is then compared, not hashed and looked up.
    last: u32,
}

impl CallTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of signatures defined.
    pub fn len(&self) -> usize {
        self.defined
    }

    /// Whether no signature is defined.
    pub fn is_empty(&self) -> bool {
        self.defined == 0
    }

    /// The bytes the signatures count for (at most [`MAX_TABLE_BYTES`]).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// What the signature bound to `id` counts for (0 if none).
    pub fn charge_of(&self, id: u32) -> usize {
        self.get(id).map_or(0, |s| s.as_ref().charge())
    }

    /// Sender side: the id for `sig`, and whether it is new (send a DEFINE frame first).
    ///
    /// # Errors
    ///
    /// [`AgentError::SignatureTooLong`] for a field over its limit;
    /// [`AgentError::CallTableFull`] once [`MAX_CALLS`] ids are taken or the new
    /// signature would pass [`MAX_TABLE_BYTES`].
    pub fn intern(&mut self, sig: SignatureRef<'_>) -> Result<(u32, bool), AgentError> {
        // The id's signature now (a DEFINE may have replaced it), so never a stale hit.
        if self.get(self.last).is_some_and(|s| s.as_ref() == sig) {
            return Ok((self.last, false));
        }
        sig.check()?;
        let hash = self.hasher.hash_one(sig);
        if let Some(ids) = self.index.get(&hash) {
            for &id in ids {
                if self.get(id).is_some_and(|s| s.as_ref() == sig) {
                    self.last = id;
                    return Ok((id, false));
                }
            }
        }
        // Skip ids the peer-side `define` may have filled (a table used both ways).
        while self
            .sigs
            .get(self.next as usize)
            .is_some_and(Option::is_some)
        {
            self.next += 1;
        }
        let id = self.next;
        if id as usize >= MAX_CALLS || self.bytes + sig.charge() > MAX_TABLE_BYTES {
            return Err(AgentError::CallTableFull);
        }
        self.put(id, sig.to_owned(), hash);
        self.next += 1;
        self.last = id;
        Ok((id, true))
    }

    /// Receiver side: bind `id` to `sig` (a DEFINE frame). A later DEFINE of the same id
    /// replaces the earlier one.
    ///
    /// # Errors
    ///
    /// [`AgentError::CallIdOutOfRange`] if `id >= MAX_CALLS`,
    /// [`AgentError::SignatureTooLong`] for a field over its limit,
    /// [`AgentError::CallTableFull`] if the table would pass [`MAX_TABLE_BYTES`]; the
    /// table is unchanged then.
    pub fn define(&mut self, id: u32, sig: Signature) -> Result<(), AgentError> {
        if id as usize >= MAX_CALLS {
            return Err(AgentError::CallIdOutOfRange(id));
        }
        sig.as_ref().check()?;
        if self.bytes - self.charge_of(id) + sig.as_ref().charge() > MAX_TABLE_BYTES {
            return Err(AgentError::CallTableFull);
        }
        if let Some(old) = self.get(id) {
            let old_hash = self.hasher.hash_one(old.as_ref());
            if let Some(ids) = self.index.get_mut(&old_hash) {
                ids.retain(|&i| i != id);
                // Redefining ids with ever new signatures must not grow the index.
                if ids.is_empty() {
                    self.index.remove(&old_hash);
                }
            }
        }
        let hash = self.hasher.hash_one(sig.as_ref());
        self.put(id, sig, hash);
        Ok(())
    }

    /// The signature bound to `id`, if any.
    pub fn get(&self, id: u32) -> Option<&Signature> {
        self.sigs.get(id as usize).and_then(Option::as_ref)
    }

    fn put(&mut self, id: u32, sig: Signature, hash: u64) {
        let i = id as usize;
        if self.sigs.len() <= i {
            self.sigs.resize(i + 1, None);
        }
        self.bytes += sig.as_ref().charge();
        if let Some(slot) = self.sigs.get_mut(i) {
            match slot.replace(sig) {
                Some(old) => self.bytes -= old.as_ref().charge(),
                None => self.defined += 1,
            }
        }
        self.index.entry(hash).or_default().push(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redefining_one_id_with_new_signatures_keeps_one_index_entry() {
        let mut table = CallTable::new();
        for i in 0..1_000 {
            let service = format!("com.example.S{i}");
            let sig = SignatureRef {
                service: &service,
                method: "m",
                parameter_types: "",
                version: "",
                group: "",
            };
            table.define(0, sig.to_owned()).unwrap();
        }
        assert_eq!(table.len(), 1);
        assert_eq!(table.index.len(), 1, "stale index entries were kept");
        assert_eq!(table.get(0).unwrap().service, "com.example.S999");
        assert_eq!(table.bytes(), table.get(0).unwrap().as_ref().charge());
    }

    fn named(service: &str) -> Signature {
        Signature {
            service: service.to_owned(),
            method: "m".to_owned(),
            ..Signature::default()
        }
    }

    #[test]
    fn the_last_id_is_taken_again_only_while_it_names_the_same_signature() {
        let (a, b) = (named("com.example.A"), named("com.example.B"));
        let mut table = CallTable::new();
        assert_eq!(table.intern(a.as_ref()), Ok((0, true)));
        assert_eq!(table.intern(a.as_ref()), Ok((0, false)));
        assert_eq!(table.intern(b.as_ref()), Ok((1, true)));
        assert_eq!(table.intern(a.as_ref()), Ok((0, false)));
        // The peer redefines the id interned last: it now names B, and A gets a new one.
        table.define(0, b.clone()).unwrap();
        assert_eq!(table.intern(b.as_ref()), Ok((0, false)));
        assert_eq!(table.intern(a.as_ref()), Ok((2, true)));
        assert_eq!(table.intern(a.as_ref()), Ok((2, false)));
        // B has two ids now (0 and 1): either names it.
        let (id, new) = table.intern(b.as_ref()).unwrap();
        assert!(!new && table.get(id) == Some(&b), "{id}");
    }

    #[test]
    fn names_over_the_limit_are_refused_both_ways() {
        let long = "x".repeat(MAX_NAME_LEN + 1);
        let mut table = CallTable::new();
        assert_eq!(
            table.define(0, named(&long)),
            Err(AgentError::SignatureTooLong)
        );
        assert_eq!(
            table.intern(named(&long).as_ref()),
            Err(AgentError::SignatureTooLong)
        );
        let types = Signature {
            parameter_types: "L".repeat(MAX_TYPES_LEN + 1),
            ..named("s")
        };
        assert_eq!(table.define(0, types), Err(AgentError::SignatureTooLong));
        assert!(table.is_empty());
        assert_eq!(table.bytes(), 0);
        // At the limit is fine.
        table.define(0, named(&"y".repeat(MAX_NAME_LEN))).unwrap();
    }

    #[test]
    fn the_bytes_of_a_table_are_bounded() {
        let big = |i: usize| named(&format!("{i:04}{}", "x".repeat(MAX_NAME_LEN - 4)));
        let mut receiver = CallTable::new();
        let mut id = 0;
        let refused = loop {
            match receiver.define(id, big(id as usize)) {
                Ok(()) => id += 1,
                Err(e) => break e,
            }
        };
        assert_eq!(refused, AgentError::CallTableFull);
        assert!(receiver.bytes() <= MAX_TABLE_BYTES);
        assert!(receiver.bytes() + big(0).as_ref().charge() > MAX_TABLE_BYTES);
        // Redefining an id with a smaller signature frees its bytes.
        let before = receiver.bytes();
        receiver.define(0, Signature::default()).unwrap();
        assert_eq!(
            receiver.bytes(),
            before - big(0).as_ref().charge() + Signature::default().as_ref().charge()
        );
        receiver.define(id, big(id as usize)).unwrap();
        // The sender side refuses the same way.
        let mut sender = CallTable::new();
        let refused = (0..MAX_CALLS)
            .map(|i| sender.intern(big(i).as_ref()))
            .find_map(Result::err);
        assert_eq!(refused, Some(AgentError::CallTableFull));
        assert!(sender.bytes() <= MAX_TABLE_BYTES);
    }
}
