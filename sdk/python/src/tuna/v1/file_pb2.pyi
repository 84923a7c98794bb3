import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FilePurpose(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FILE_PURPOSE_UNSPECIFIED: _ClassVar[FilePurpose]
    FILE_PURPOSE_DATASET: _ClassVar[FilePurpose]
    FILE_PURPOSE_MODEL: _ClassVar[FilePurpose]

class DatasetFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATASET_FORMAT_UNSPECIFIED: _ClassVar[DatasetFormat]
    DATASET_FORMAT_TEXT: _ClassVar[DatasetFormat]
    DATASET_FORMAT_PROMPT_COMPLETION: _ClassVar[DatasetFormat]
    DATASET_FORMAT_CHAT: _ClassVar[DatasetFormat]
    DATASET_FORMAT_CLASSIFICATION: _ClassVar[DatasetFormat]
    DATASET_FORMAT_PREFERENCE: _ClassVar[DatasetFormat]
FILE_PURPOSE_UNSPECIFIED: FilePurpose
FILE_PURPOSE_DATASET: FilePurpose
FILE_PURPOSE_MODEL: FilePurpose
DATASET_FORMAT_UNSPECIFIED: DatasetFormat
DATASET_FORMAT_TEXT: DatasetFormat
DATASET_FORMAT_PROMPT_COMPLETION: DatasetFormat
DATASET_FORMAT_CHAT: DatasetFormat
DATASET_FORMAT_CLASSIFICATION: DatasetFormat
DATASET_FORMAT_PREFERENCE: DatasetFormat

class UploadFileHeader(_message.Message):
    __slots__ = ("name", "purpose", "size_bytes", "sha256", "format")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    name: str
    purpose: FilePurpose
    size_bytes: int
    sha256: str
    format: DatasetFormat
    def __init__(self, name: _Optional[str] = ..., purpose: _Optional[_Union[FilePurpose, str]] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., format: _Optional[_Union[DatasetFormat, str]] = ...) -> None: ...

class UploadFileRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: UploadFileHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[UploadFileHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class File(_message.Message):
    __slots__ = ("id", "name", "purpose", "size_bytes", "sha256", "format", "line_count", "created_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    LINE_COUNT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    purpose: FilePurpose
    size_bytes: int
    sha256: str
    format: DatasetFormat
    line_count: int
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., purpose: _Optional[_Union[FilePurpose, str]] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., format: _Optional[_Union[DatasetFormat, str]] = ..., line_count: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetFileRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListFilesRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "purpose")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    purpose: FilePurpose
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., purpose: _Optional[_Union[FilePurpose, str]] = ...) -> None: ...

class ListFilesResponse(_message.Message):
    __slots__ = ("files", "next_page_token")
    FILES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    files: _containers.RepeatedCompositeFieldContainer[File]
    next_page_token: str
    def __init__(self, files: _Optional[_Iterable[_Union[File, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteFileRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class DownloadFileRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class DownloadFileResponse(_message.Message):
    __slots__ = ("file", "chunk")
    FILE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    file: File
    chunk: bytes
    def __init__(self, file: _Optional[_Union[File, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class DeleteFileResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
