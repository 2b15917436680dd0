//! The protobuf codec of keyrack's services (and of Check): prost's, except
//! that a request that does not decode is the caller's malformed input,
//! INVALID_ARGUMENT like every other bad input, where tonic's prost codec
//! says INTERNAL, which reads as a server fault and pages someone.
//! build.rs names it as the generated services' codec.

use bytes::{Buf, Bytes};
use prost::Message;
use std::marker::PhantomData;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

/// A request as keyrack's services decode it, from the whole received
/// message at once: a prost message, or Check's view, which reads the
/// message in place.
pub trait RequestMessage: Sized {
    /// Why a message is not a request of this type.
    type Malformed: std::fmt::Display;

    /// Decodes `message`, one whole request.
    fn decode_request(message: Bytes) -> Result<Self, Self::Malformed>;
}

impl<U: Message + Default> RequestMessage for U {
    type Malformed = prost::DecodeError;

    fn decode_request(message: Bytes) -> Result<Self, Self::Malformed> {
        U::decode(message)
    }
}

/// Encodes `T` as prost does; decodes `U`, refusing a malformed one as
/// INVALID_ARGUMENT.
#[derive(Debug, Clone)]
pub struct RequestCodec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for RequestCodec<T, U> {
    fn default() -> Self {
        Self {
            _types: PhantomData,
        }
    }
}

impl<T, U> Codec for RequestCodec<T, U>
where
    T: Message + Send + 'static,
    U: RequestMessage + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = RequestDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestDecoder { _type: PhantomData }
    }
}

/// Decodes `U`; see [`RequestCodec`].
#[derive(Debug, Clone)]
pub struct RequestDecoder<U> {
    _type: PhantomData<U>,
}

impl<U: RequestMessage> Decoder for RequestDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        // The message whole, as one `Bytes`: decoding from it is cheaper
        // than through the frame buffer's `Buf`, and Check's view keeps it.
        let message = buf.copy_to_bytes(buf.remaining());
        U::decode_request(message)
            .map(Some)
            .map_err(|error| Status::invalid_argument(error.to_string()))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}
