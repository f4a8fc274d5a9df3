//! The auditID lifted out of the raw event into two columns.
//!
//! An auditID is a random UUID: compressed, its 36 characters cost a third of a stored event
//! (27 of 75 bytes on the load generator's events at the store's zstd settings) and break the
//! matches around them, while as 128 bits in two columns it costs 16. The event is still kept
//! byte for byte: the stored form records where the characters were cut, and reading puts them
//! back from the columns. An auditID that is not a UUID in the form the kube-apiserver writes
//! (a client may send any `Audit-ID`) stays in the event, and its columns hold a digest instead.

use sha2::Digest;
use uuid::Uuid;

/// The length of the stored form's header: where the auditID was cut, plus one (0: not cut),
/// little-endian.
const HEADER: usize = 4;

/// The 128 bits an auditID is found by, and whether they are the UUID itself, which the raw event
/// can then give up.
///
/// A UUID counts when it is written as the kube-apiserver writes one: lowercase, hyphenated, of
/// the RFC 4122 variant. Any other ID gets the first 128 bits of its SHA-256 with the variant's
/// top bit cleared, so that a chosen ID can collide neither with a UUID nor (short of breaking
/// SHA-256) with another ID.
pub fn audit_id_bits(audit_id: &str) -> (u128, bool) {
    if let Ok(uuid) = Uuid::try_parse(audit_id)
        && uuid.get_variant() == uuid::Variant::RFC4122
        && uuid.hyphenated().encode_lower(&mut Uuid::encode_buffer()) == audit_id
    {
        return (uuid.as_u128(), true);
    }
    let digest = sha2::Sha256::digest(audit_id.as_bytes());
    let first: [u8; 16] = digest[..16].try_into().expect("a SHA-256 has 32 bytes");
    // The variant is the top bits of the ninth byte, bit 63 of the number.
    (u128::from_be_bytes(first) & !(1 << 63), false)
}

/// The stored form of `raw`, whose auditID is `audit_id`: cut out of it when `liftable` and
/// found in it as the kube-apiserver writes the field, kept otherwise.
pub fn lift(raw: &[u8], audit_id: &str, liftable: bool) -> Vec<u8> {
    let cut = liftable.then(|| {
        let field = format!("\"auditID\":\"{audit_id}\"");
        memchr::memmem::find(raw, field.as_bytes())
            .map(|start| start + "\"auditID\":\"".len())
            .and_then(|at| u32::try_from(at + 1).ok())
    });
    let mut stored = Vec::with_capacity(HEADER + raw.len());
    match cut.flatten() {
        Some(header) => {
            let at = header as usize - 1;
            stored.extend_from_slice(&header.to_le_bytes());
            stored.extend_from_slice(&raw[..at]);
            stored.extend_from_slice(&raw[at + audit_id.len()..]);
        }
        None => {
            stored.extend_from_slice(&0u32.to_le_bytes());
            stored.extend_from_slice(raw);
        }
    }
    stored
}

/// The raw event back from its stored form and its auditID's bits; `None` when the stored form
/// is damaged.
pub fn restore(stored: &[u8], bits: u128) -> Option<Vec<u8>> {
    let (header, event) = stored.split_first_chunk::<HEADER>()?;
    let Some(at) = u32::from_le_bytes(*header).checked_sub(1) else {
        return Some(event.to_vec());
    };
    let (before, after) = event.split_at_checked(at as usize)?;
    let mut buffer = Uuid::encode_buffer();
    let id = Uuid::from_u128(bits).hyphenated().encode_lower(&mut buffer);
    let mut raw = Vec::with_capacity(event.len() + id.len());
    raw.extend_from_slice(before);
    raw.extend_from_slice(id.as_bytes());
    raw.extend_from_slice(after);
    Some(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "9dfef109-983c-4c30-a1b7-8e37be329aa9";

    fn round_trip(raw: &str, id: &str) -> Vec<u8> {
        let (bits, liftable) = audit_id_bits(id);
        let stored = lift(raw.as_bytes(), id, liftable);
        assert_eq!(restore(&stored, bits).unwrap(), raw.as_bytes(), "{raw}");
        stored
    }

    #[test]
    fn a_kube_apiserver_auditid_is_cut_out_and_put_back_byte_for_byte() {
        let raw = format!(r#"{{"kind":"Event","level":"Metadata","auditID":"{ID}","verb":"get"}}"#);
        let stored = round_trip(&raw, ID);
        assert_eq!(stored.len(), 4 + raw.len() - ID.len());
        assert!(!String::from_utf8_lossy(&stored).contains(ID));
        assert_eq!(
            audit_id_bits(ID),
            (Uuid::parse_str(ID).unwrap().as_u128(), true)
        );
    }

    #[test]
    fn the_same_id_elsewhere_in_the_event_is_left_alone() {
        let raw = format!(
            r#"{{"requestObject":{{"note":"{ID}","x":{{"auditID":"{ID}"}}}},"auditID":"{ID}"}}"#
        );
        let stored = round_trip(&raw, ID);
        assert_eq!(String::from_utf8_lossy(&stored).matches(ID).count(), 2);
    }

    #[test]
    fn an_id_not_written_as_the_kube_apiserver_writes_one_stays_in_the_event() {
        let upper = ID.to_uppercase();
        let braced = format!("{{{ID}}}");
        let not_rfc4122 = "9dfef109-983c-4c30-01b7-8e37be329aa9";
        for id in [
            upper.as_str(),
            &braced,
            not_rfc4122,
            "my-request-1",
            "",
            "é",
        ] {
            let raw = format!(r#"{{"auditID":"{id}","verb":"get"}}"#);
            let stored = round_trip(&raw, id);
            assert_eq!(&stored[4..], raw.as_bytes());
            let (bits, liftable) = audit_id_bits(id);
            assert!(!liftable, "{id}");
            assert_eq!(
                bits & (1 << 63),
                0,
                "{id}: a digest is never of the UUID variant"
            );
            assert_ne!(bits, audit_id_bits(ID).0);
        }
        assert_ne!(audit_id_bits("a").0, audit_id_bits("b").0);
    }

    #[test]
    fn an_escaped_or_spaced_id_stays_in_the_event() {
        let escaped = format!(r#"{{"auditID":"\u0039{}"}}"#, &ID[1..]);
        assert_eq!(&round_trip(&escaped, ID)[4..], escaped.as_bytes());
        let spaced = format!(r#"{{"auditID": "{ID}"}}"#);
        assert_eq!(&round_trip(&spaced, ID)[4..], spaced.as_bytes());
    }

    #[test]
    fn a_damaged_stored_form_is_refused() {
        assert_eq!(restore(b"", 0), None);
        assert_eq!(restore(&[1, 0], 0), None);
        assert_eq!(restore(&[9, 0, 0, 0, b'{', b'}'], 0), None);
        assert_eq!(restore(&[0, 0, 0, 0, b'{', b'}'], 0).unwrap(), b"{}");
    }
}
