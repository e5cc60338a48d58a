//! The codec of every generated client and server: prost's, with small initial
//! buffers.
//!
//! tonic gives each RPC an 8 KiB decode buffer and an 8 KiB encode buffer up
//! front. An agent session is a long-lived stream of small messages (a report is
//! a few hundred bytes, a heartbeat a dozen), and a controller holds one per
//! agent: at 4,000 sessions those two buffers alone were 64 MB of the leader's
//! heap (heaptrack, `bench-scale`). Starting at 512 bytes, a buffer grows to
//! the largest message it carried and stays there; large messages (Raft batches,
//! snapshots, a status of thousands of pairs) only cost a few reallocations.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Initial size of a stream's encode and decode buffers.
pub const INITIAL_BUFFER: usize = 512;

/// tonic's default: an encoder yields after this much buffered output.
const YIELD_THRESHOLD: usize = 32 * 1024;

fn settings() -> BufferSettings {
    BufferSettings::new(INITIAL_BUFFER, YIELD_THRESHOLD)
}

/// [`ProstCodec`] with [`INITIAL_BUFFER`]-byte initial buffers (set as the
/// `codec_path` of the generated code in `build.rs`).
#[derive(Debug, Clone)]
pub struct CompactCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for CompactCodec<T, U> {
    fn default() -> Self {
        Self { _pd: PhantomData }
    }
}

impl<T, U> Codec for CompactCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}
