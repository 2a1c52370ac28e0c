//! Fuzzes `verge_proto::decode`: the first input byte picks the channel, the rest is
//! the payload. Decoding must never panic (it may, of course, return an error). Every
//! successfully decoded message must also survive a re-encode/decode round trip.

#![no_main]

use libfuzzer_sys::fuzz_target;
use verge_proto::{Channel, decode, decode_any, encode, node_topic};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, payload)) = data.split_first() else {
        return;
    };
    let channel = Channel::ALL[usize::from(selector) % Channel::ALL.len()];
    if let Ok(msg) = decode(channel, payload) {
        assert_eq!(msg.channel(), channel);
        let again = encode(&msg);
        // Re-encoding may grow the payload (`1e2` becomes `100.0`), so the round trip
        // is only required to hold while it still fits the channel.
        if again.len() <= channel.max_payload() {
            assert_eq!(decode(channel, &again).as_ref(), Ok(&msg));
        }
    }
    let _ = decode_any(&node_topic("edge-1", channel), payload);
});
