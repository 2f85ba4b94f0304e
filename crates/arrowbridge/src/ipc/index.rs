//! Where the messages of an IPC file or stream lie: the footer's blocks, or a walk of the
//! stream.

use std::ops::Range;
use std::path::Path;

use arrow_buffer::Buffer;
use arrow_ipc::reader::read_footer_length;
use arrow_ipc::root_as_footer;
use arrow_schema::Schema;

use crate::error::Result;

use super::*;

/// Where one IPC message lies in the data: its flatbuffer and its body.
#[derive(Clone, Debug)]
pub(super) struct MessageLocation {
    pub(super) metadata: Range<usize>,
    pub(super) body: Range<usize>,
}

/// The index of the column called `name`, which must be the only one of its name.
pub(super) fn column_index(schema: &Schema, name: &str, path: &Path) -> Result<usize> {
    let matches: Vec<usize> = schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| f.name() == name)
        .map(|(i, _)| i)
        .collect();
    match matches[..] {
        [index] => Ok(index),
        [] => Err(bad_file(
            path,
            format!(
                "no column {name:?}; the columns are {:?}",
                schema.fields().iter().map(|f| f.name()).collect::<Vec<_>>()
            ),
        )),
        _ => Err(bad_file(
            path,
            format!("{} columns are named {name:?}", matches.len()),
        )),
    }
}

/// The message at `at`, whose flatbuffer was checked when the data was opened.
pub(super) fn message_at<'a>(
    path: &Path,
    data: &'a Buffer,
    at: &MessageLocation,
) -> Result<arrow_ipc::Message<'a>> {
    arrow_ipc::root_as_message(&data[at.metadata.clone()])
        .map_err(|e| bad_file(path, format!("corrupt message: {e}")))
}

/// The (metadata, body) of each message of an IPC stream, with their bounds checked, as
/// ranges of `bytes`.
pub(super) fn stream_messages(path: &Path, bytes: &[u8]) -> Result<Vec<MessageLocation>> {
    let mut messages = Vec::new();
    let truncated = || bad_file(path, "truncated Arrow IPC message");
    let mut at = 0usize;
    while bytes.len() - at >= 4 {
        let word = |i: usize| -> Result<i32> {
            let four = bytes.get(i..i + 4).ok_or_else(truncated)?;
            Ok(i32::from_le_bytes(four.try_into().expect("4 bytes")))
        };
        let (mut len, mut header) = (word(at)?, 4);
        if len == -1 {
            len = word(at + 4)?;
            header = 8;
        }
        if len == 0 {
            break; // end of stream
        }
        let len = usize::try_from(len)
            .map_err(|_| bad_file(path, format!("negative message length {len}")))?;
        let metadata = at + header..(at + header).checked_add(len).ok_or_else(truncated)?;
        let flatbuffer = bytes.get(metadata.clone()).ok_or_else(truncated)?;
        let message = arrow_ipc::root_as_message(flatbuffer)
            .map_err(|e| bad_file(path, format!("corrupt message: {e}")))?;
        let body_len = usize::try_from(message.bodyLength()).map_err(|_| truncated())?;
        let body = metadata.end..metadata.end.checked_add(body_len).ok_or_else(truncated)?;
        if body.end > bytes.len() {
            return Err(truncated());
        }
        at = body.end;
        messages.push(MessageLocation { metadata, body });
    }
    Ok(messages)
}

/// The schema, dictionary messages and record batch messages of an IPC stream.
pub(super) type Index = (Schema, Vec<MessageLocation>, Vec<MessageLocation>);

pub(super) fn index_stream(path: &Path, data: &Buffer) -> Result<Index> {
    let what = path.display().to_string();
    let messages = stream_messages(path, data)?;
    let no_schema = || bad_file(path, "not an Arrow IPC file or stream (no schema message)");
    let (first, rest) = messages.split_first().ok_or_else(no_schema)?;
    let schema = message_at(path, data, first)?
        .header_as_schema()
        .ok_or_else(no_schema)
        .and_then(|fb| schema_of(&what, fb))?;
    let (mut dictionaries, mut batches) = (Vec::new(), Vec::new());
    for at in rest {
        match message_at(path, data, at)?.header_type() {
            arrow_ipc::MessageHeader::RecordBatch => batches.push(at.clone()),
            arrow_ipc::MessageHeader::DictionaryBatch => dictionaries.push(at.clone()),
            arrow_ipc::MessageHeader::Schema => {
                return Err(bad_file(path, "a second schema message in the stream"))
            }
            _ => {}
        }
    }
    Ok((schema, dictionaries, batches))
}

pub(super) fn index_file(path: &Path, data: &Buffer) -> Result<Index> {
    let what = path.display().to_string();
    let trailer = data.len() - 10;
    let footer_len = read_footer_length(data[trailer..].try_into().expect("10 bytes"))
        .map_err(|e| bad_file(path, e.to_string()))?;
    let footer_start = trailer
        .checked_sub(footer_len)
        .filter(|&s| s >= 8)
        .ok_or_else(|| {
            bad_file(
                path,
                format!(
                    "footer of {footer_len} bytes does not fit in a file of {} bytes",
                    data.len()
                ),
            )
        })?;
    let footer = root_as_footer(&data[footer_start..trailer])
        .map_err(|e| bad_file(path, format!("corrupt footer: {e}")))?;
    let schema = footer
        .schema()
        .ok_or_else(|| bad_file(path, "the footer has no schema"))
        .and_then(|fb| schema_of(&what, fb))?;
    let locate = |block: &arrow_ipc::Block| -> Result<MessageLocation> {
        let outside = || {
            bad_file(
                path,
                format!(
                    "a block at offset {} of {} + {} bytes points outside the file ({} bytes)",
                    block.offset(),
                    block.metaDataLength(),
                    block.bodyLength(),
                    data.len()
                ),
            )
        };
        let start = usize::try_from(block.offset()).map_err(|_| outside())?;
        let meta_len = usize::try_from(block.metaDataLength()).map_err(|_| outside())?;
        let body_len = usize::try_from(block.bodyLength()).map_err(|_| outside())?;
        let meta_end = start.checked_add(meta_len).ok_or_else(outside)?;
        let body_end = meta_end.checked_add(body_len).ok_or_else(outside)?;
        if body_end > footer_start {
            return Err(outside());
        }
        // The metadata block is [continuation][length][flatbuffer], padded.
        let prefix = match &data[start..meta_end] {
            [0xff, 0xff, 0xff, 0xff, _, _, _, _, ..] => 8,
            [_, _, _, _, ..] => 4,
            _ => return Err(bad_file(path, "truncated message metadata")),
        };
        Ok(MessageLocation {
            metadata: start + prefix..meta_end,
            body: meta_end..body_end,
        })
    };
    let [dictionaries, batches] = [footer.dictionaries(), footer.recordBatches()].map(|blocks| {
        blocks
            .iter()
            .flatten()
            .map(locate)
            .collect::<Result<Vec<_>>>()
    });
    Ok((schema, dictionaries?, batches?))
}
