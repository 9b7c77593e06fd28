"""Header reading at dcm2niix's speed: the kept elements read as pydicom reads them, the skipped ones unparsed,
and every damaged file still refused."""

import struct
import subprocess
import zlib

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian

from dwisynth.convert import convert_series, dcm2niix_binary
from dwisynth.dicom import (HEADER_PRIVATE_ELEMENTS, HEADER_SEQUENCES, frame_diffusion, read_bvalue, read_header,
                            read_series_headers, write_dwi_series, write_enhanced_dwi_series)
from dwisynth.errors import DicomSeriesError

# A creator pydicom's private dictionary does not know: it would read some of its elements as sequences
PRIVATE_CREATOR = "DWISYNTH TEST PRIVATE"


def _undefined_length(element) -> None:
    element.is_undefined_length = True
    for item in element.value:
        item.is_undefined_length_sequence_item = True


def _private_item(count: int) -> Dataset:
    item = Dataset()
    item.add_new(0x20050011, "LO", PRIVATE_CREATOR)
    for n in range(count):
        item.add_new(0x20051120 + n, "FL", float(n))
    return item


def add_nested_private_sequences(ds: Dataset) -> None:
    """As a Philips classic image carries them: undefined-length private sequences and items, nested, with an
    item of defined length among them and a private sequence written as an undefined-length UN (as a PACS that
    does not know the creator forwards it)."""
    ds.add_new(0x20050011, "LO", PRIVATE_CREATOR)
    for n in range(20):
        ds.add_new(0x20051120 + n, "SS", n)
    per_image = _private_item(30)
    per_image.add_new(0x00180050, "DS", "99")  # a repeated standard attribute inside: not the image's own
    per_image.add_new(0x2005110F, "SQ", Sequence([_private_item(5), _private_item(7)]))
    _undefined_length(per_image[0x2005110F])
    ds.add_new(0x2005140F, "SQ", Sequence([per_image, _private_item(3)]))
    _undefined_length(ds[0x2005140F])
    ds[0x2005140F].value[1].is_undefined_length_sequence_item = False  # this item with its length
    ds.add_new(0x20051150, "UN", _implicit_vr_items(4))
    ds[0x20051150].is_undefined_length = True  # pydicom writes the sequence delimiter after the value


def _implicit_vr_items(count: int) -> bytes:
    """One undefined-length item of `count` private FL elements, in implicit VR little endian."""
    creator = PRIVATE_CREATOR.encode() + b" " * (len(PRIVATE_CREATOR) % 2)
    elements = struct.pack("<HHI", 0x2005, 0x0011, len(creator)) + creator + b"".join(
        struct.pack("<HHIf", 0x2005, 0x1120 + n, 4, float(n)) for n in range(count))
    return struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + elements + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)


def _philips_series(folder, small_grid, small_dwi, patient, uids, syntax=None):
    volumes, bvals = small_dwi
    files = write_dwi_series(folder, volumes, bvals, small_grid, "philips", patient, uids)
    for path in files:
        ds = pydicom.dcmread(path)
        add_nested_private_sequences(ds)
        if syntax is not None:
            ds.file_meta.TransferSyntaxUID = syntax
        ds.save_as(path, enforce_file_format=True)
    return files


def _standard_values(ds: Dataset) -> dict:
    return {element.keyword: element.value for element in ds
            if not element.tag.is_private and element.VR != "SQ" and element.tag != 0x7FE00010}


@pytest.mark.parametrize("syntax", [None, ImplicitVRLittleEndian], ids=["explicit VR", "implicit VR"])
def test_a_header_reads_every_standard_value_and_the_vendor_bvalue_as_pydicom_but_skips_private_sequences(
        tmp_path, small_grid, small_dwi, patient, uids, syntax):
    files = _philips_series(tmp_path / "dcm", small_grid, small_dwi, patient, uids, syntax)
    for path in files[::5]:
        full = pydicom.dcmread(path, stop_before_pixels=True)
        header = read_header(path)
        assert _standard_values(header) == _standard_values(full)
        assert header.SliceThickness == small_grid.spacing[2]  # the image's own, not the one in the sequence
        assert read_bvalue(header) == read_bvalue(full) and read_bvalue(header) in small_dwi[1]
        assert header.file_meta.TransferSyntaxUID == full.file_meta.TransferSyntaxUID
        private = {element.tag for element in header if element.tag.is_private}
        assert private == {0x20010010, 0x20011003}  # the b-value and its creator
        assert 0x2005140F in full and 0x20051150 in full and 0x20051120 in full


def test_a_series_with_nested_private_sequences_converts_with_every_b_value(tmp_path, small_grid, small_dwi,
                                                                           patient, uids):
    _philips_series(tmp_path / "dcm", small_grid, small_dwi, patient, uids)
    record = convert_series(tmp_path / "dcm", tmp_path / "out", "H01", "DWI", log=lambda *_: None)
    assert record["header_bvals"] == small_dwi[1] and record["bvals"] == small_dwi[1]


def test_an_enhanced_file_with_undefined_length_functional_groups_reads_each_frames_bvalue(tmp_path, small_grid,
                                                                                         small_dwi, patient, uids):
    volumes, bvals = small_dwi
    [path] = write_enhanced_dwi_series(tmp_path / "dcm", volumes, bvals, small_grid, patient, uids)
    ds = pydicom.dcmread(path)
    for keyword in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        _undefined_length(ds[keyword])
    add_nested_private_sequences(ds)
    ds.save_as(path, enforce_file_format=True)
    header = read_header(path)
    expected = [b for b in bvals for _ in range(small_grid.shape[2])]
    assert [b for b, _ in frame_diffusion(header)] == expected
    assert frame_diffusion(header) == frame_diffusion(pydicom.dcmread(path, stop_before_pixels=True))
    assert 0x2005140F not in header and set(HEADER_SEQUENCES).intersection(header.keys())
    assert read_series_headers(tmp_path / "dcm")[0].NumberOfFrames == len(expected)


def test_a_deflated_file_the_walk_does_not_follow_is_read_in_full(tmp_path, small_grid, small_dwi, patient, uids):
    [path, *_] = _philips_series(tmp_path / "dcm", small_grid, small_dwi, patient, uids,
                                 DeflatedExplicitVRLittleEndian)
    header = read_header(path)
    assert 0x2005140F in header  # pydicom's own read: everything
    assert read_bvalue(header) == 0 and header.Rows == small_grid.shape[1]
    # a whole deflated series passes the pixel-bytes check: pydicom inflates it all to read the header
    assert len(read_series_headers(tmp_path / "dcm")) == len(list((tmp_path / "dcm").iterdir()))


@pytest.mark.parametrize("cut", ["in a skipped private sequence", "in the pixel data", "in a kept value"])
def test_a_file_cut_anywhere_is_refused_naming_it(tmp_path, small_grid, small_dwi, patient, uids, cut):
    files = _philips_series(tmp_path / "dcm", small_grid, small_dwi, patient, uids)
    bad = files[3]
    data = bad.read_bytes()
    ends = {"in a skipped private sequence": data.index(b"\x05\x20\x0f\x14") + 40,
            "in the pixel data": len(data) - 2,
            "in a kept value": data.index(b"\x10\x00\x10\x00") + 12}  # inside PatientName
    bad.write_bytes(data[:ends[cut]])
    with pytest.raises(DicomSeriesError, match=rf"file 4 of {len(files)} \(by name\): not a readable DICOM image"):
        read_series_headers(tmp_path / "dcm", source="study/sub-H02 DWI")
    with pytest.raises(DicomSeriesError, match=bad.name):
        convert_series(tmp_path / "dcm", tmp_path / "out", "H02", "DWI", log=lambda *_: None)
    assert not (tmp_path / "out").exists()


def test_the_private_elements_kept_are_the_vendor_diffusion_tags_dcm2niix_reads():
    assert {(0x0019, 0x0C), (0x0043, 0x39), (0x2001, 0x03)} <= HEADER_PRIVATE_ELEMENTS
    assert {0x52009229, 0x52009230} <= set(HEADER_SEQUENCES)


def test_a_file_with_a_dicom_preamble_and_no_dicom_after_it_is_not_a_readable_image(tmp_path):
    """A zipped export or a damaged file renamed .dcm: refused as before, not taken for a header."""
    path = tmp_path / "IM_0001.dcm"
    path.write_bytes(b"\0" * 128 + b"DICM" + zlib.compress(np.arange(1000).tobytes()))
    with pytest.raises(DicomSeriesError, match="IM_0001.dcm: not a readable DICOM image"):
        read_series_headers(tmp_path)


def test_the_image_dwisynth_gzips_holds_dcm2niix_s_own_gzipped_voxels_and_no_file_name(tmp_path, small_grid,
                                                                                     small_dwi, patient, uids):
    """dcm2niix writes the image uncompressed for the checks and dwisynth gzips it: the result must be what
    dcm2niix's own -z y gives, and its gzip header must carry no name (a file name can hold a patient's)."""
    _philips_series(tmp_path / "dcm", small_grid, small_dwi, patient, uids)
    convert_series(tmp_path / "dcm", tmp_path / "out", "H03", "DWI", log=lambda *_: None)
    (tmp_path / "bare").mkdir()
    subprocess.run([dcm2niix_binary(), "-b", "y", "-ba", "y", "-z", "y", "-f", "bare", "-o", str(tmp_path / "bare"),
                    str(tmp_path / "dcm")], capture_output=True, check=True)
    ours, bare = nib.load(tmp_path / "out" / "sub-H03_dwi.nii.gz"), nib.load(tmp_path / "bare" / "bare.nii.gz")
    assert np.array_equal(np.asarray(ours.dataobj), np.asarray(bare.dataobj))
    assert np.array_equal(ours.affine, bare.affine) and ours.header == bare.header
    magic, method, flags, mtime = struct.unpack("<2sBBI", (tmp_path / "out" / "sub-H03_dwi.nii.gz").read_bytes()[:8])
    assert (magic, method, mtime) == (b"\x1f\x8b", 8, 0) and not flags & 0x08  # deflate, no FNAME


def test_every_attribute_the_identifier_scan_reads_is_one_a_header_read_keeps():
    """A sequence added to the identifier scan's attributes would find nothing: a header read skips the
    sequences it does not list."""
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    from dwisynth.identifiers import DESCRIPTOR_ATTRIBUTES, IDENTIFYING_ATTRIBUTES

    for keyword in [*IDENTIFYING_ATTRIBUTES, *DESCRIPTOR_ATTRIBUTES]:
        tag = tag_for_keyword(keyword)
        assert tag is not None and (dictionary_VR(tag) != "SQ" or tag in HEADER_SEQUENCES), keyword


@pytest.mark.parametrize("syntax", [None, ImplicitVRLittleEndian], ids=["explicit VR", "implicit VR"])
def test_names_are_decoded_in_each_files_character_set(tmp_path, small_grid, small_dwi, patient, uids, syntax):
    """The same raw bytes are a different name under Latin-1 and UTF-8; the identifier scan must look for the
    name the file means."""
    files = _philips_series(tmp_path / "dcm", small_grid, small_dwi, patient, uids, syntax)
    for path, charset in zip(files[:2], ("ISO_IR 100", "ISO_IR 192")):
        ds = pydicom.dcmread(path)
        ds.SpecificCharacterSet = charset
        ds.add_new(0x00100010, "PN", "M\u00fcller^J\u00fcrgen".encode("utf-8"))  # raw bytes, written as they are
        ds.save_as(path, enforce_file_format=True)
    names = [str(read_header(path).PatientName) for path in files[:2]]
    assert names == ["M\u00c3\u00bcller^J\u00c3\u00bcrgen", "M\u00fcller^J\u00fcrgen"]
