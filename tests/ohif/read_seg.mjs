#!/usr/bin/env node
// Read DICOM-SEGs the way OHIF does, headless: dcmjs parses the files, and
// @cornerstonejs/adapters (adaptersSEG.Cornerstone3D.Segmentation.createFromDICOMSegBuffer) decodes
// the SEG frames and places them on the source slices as @cornerstonejs/core labelmap images.
//
// usage: node read_seg.mjs SEG_FILE SOURCE_DIR [SEG_FILE SOURCE_DIR ...]
//
// SOURCE_DIR: every regular file in it (any name) is parsed; the images of the series the SEG
// references are the stack (OHIF's referenced display set). For each pair one line of JSON goes
// to stdout, in order:
//   {seg, source_dir, adapters_version, dcmjs_version, entry_point, segmentation_type,
//    overlapping_segments,                       (the reader's flag)
//    segments: [{number, label}],
//    placement: [{frame, segment, sop_instance_uid}]  (the adapters' findReferenceSourceImageId for
//                                                      every frame; null: not placed)
//    segments_on_frame: {sop_instance_uid: [segment numbers the reader reported on that slice]},
//    masks: [{sop_instance_uid, segment, rows, cols, voxels, bits}]  (non-empty ones; bits: base64
//            of a uint8 0/1 array, row-major, as the reader's labelmap images hold it)
//    warnings: [what the libraries logged as warnings/errors]}
// or {seg, source_dir, error} where the reader refused the SEG. Library messages go to stderr.
// Exit status: 0 all read, 1 a SEG was refused, 2 usage or setup error.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

// Whatever the libraries log must not reach stdout (the JSON); keep their warnings for the report.
let warnings = [];
for (const level of ['log', 'info', 'warn', 'error', 'debug', 'trace']) {
  const toStderr = console.error.bind(console);
  console[level] = (...args) => {
    if (level === 'warn' || level === 'error') {
      warnings.push(args.map(a => (a instanceof Error ? a.message : String(a))).join(' '));
    }
    toStderr(`[${level}]`, ...args);
  };
}

function usage(message) {
  process.stderr.write(`read_seg: ${message}\nusage: node read_seg.mjs SEG_FILE SOURCE_DIR [SEG_FILE SOURCE_DIR ...]\n`);
  process.exit(2);
}

const args = process.argv.slice(2);
if (args.length === 0 || args.length % 2 !== 0) {
  usage('expected pairs of SEG_FILE SOURCE_DIR');
}

let cornerstone, adaptersSEG, findReferenceSourceImageId, getSegmentIndex, dcmjs;
try {
  cornerstone = await import('@cornerstonejs/core');
  ({ adaptersSEG } = await import('@cornerstonejs/adapters'));
  // the function the adapters' frame insertion calls to find a frame's source slice
  ({ findReferenceSourceImageId, getSegmentIndex } = await import(
    '@cornerstonejs/adapters/cornerstone/Segmentation_4X'
  ));
  dcmjs = (await import('dcmjs')).default;
} catch (error) {
  usage(`the OHIF readers are not installed (bash tests/ohif/install.sh): ${error.message}`);
}
const here = path.dirname(fileURLToPath(import.meta.url));
const packageVersion = name =>
  JSON.parse(fs.readFileSync(path.join(here, 'node_modules', name, 'package.json'), 'utf8')).version;
const adaptersVersion = packageVersion('@cornerstonejs/adapters');
const dcmjsVersion = packageVersion('dcmjs');

const { DicomMessage, DicomMetaDictionary } = dcmjs.data;
const SEG_SOP_CLASSES = new Set(['1.2.840.10008.5.1.4.1.1.66.4', '1.2.840.10008.5.1.4.1.1.66.7']);
const BUFFER_SEG_IMAGE_ID = 'cornerstone-adapters-buffer-seg:0'; // labelmapImagesFromBuffer.js
const TOLERANCE = 1e-3; // OHIF's

class Refused extends Error {}

const toArrayBuffer = buffer => buffer.buffer.slice(buffer.byteOffset, buffer.byteOffset + buffer.byteLength);
const numbers = value => (value === undefined || value === null ? undefined : [].concat(value).map(Number));
const first = value => (Array.isArray(value) ? value[0] : value);

function readHeader(file) {
  const dicomData = DicomMessage.readFile(toArrayBuffer(fs.readFileSync(file)), {
    untilTag: '7FE00010', // the source images' pixels are not needed
    includeUntilTagValue: false,
  });
  return DicomMetaDictionary.naturalizeDataset(dicomData.dict);
}

// the modules OHIF's MetadataProvider builds from a naturalized instance, as far as the reader uses them
function moduleOf(type, ds) {
  const iop = numbers(ds.ImageOrientationPatient);
  const spacing = numbers(ds.PixelSpacing) ?? [1, 1];
  switch (type) {
    case 'instance':
      return ds;
    case 'generalImageModule':
      return { sopInstanceUID: ds.SOPInstanceUID, instanceNumber: Number(ds.InstanceNumber) };
    case 'generalSeriesModule':
      return {
        modality: ds.Modality,
        seriesInstanceUID: ds.SeriesInstanceUID,
        seriesNumber: Number(ds.SeriesNumber),
        studyInstanceUID: ds.StudyInstanceUID,
      };
    case 'imagePlaneModule':
      return {
        frameOfReferenceUID: ds.FrameOfReferenceUID,
        rows: Number(ds.Rows),
        columns: Number(ds.Columns),
        imageOrientationPatient: iop,
        rowCosines: iop.slice(0, 3),
        columnCosines: iop.slice(3, 6),
        imagePositionPatient: numbers(ds.ImagePositionPatient),
        sliceThickness: Number(ds.SliceThickness),
        pixelSpacing: spacing,
        rowPixelSpacing: spacing[0],
        columnPixelSpacing: spacing[1],
      };
    case 'imagePixelModule':
      return {
        samplesPerPixel: Number(ds.SamplesPerPixel),
        photometricInterpretation: ds.PhotometricInterpretation,
        rows: Number(ds.Rows),
        columns: Number(ds.Columns),
        bitsAllocated: Number(ds.BitsAllocated),
        bitsStored: Number(ds.BitsStored),
        highBit: Number(ds.HighBit),
        pixelRepresentation: Number(ds.PixelRepresentation),
      };
    default:
      return undefined;
  }
}

class MetadataProvider {
  constructor(imageIds, sources) {
    this.byImageId = new Map(sources.map((ds, i) => [imageIds[i], ds]));
    this.custom = new Map();
  }
  get(type, imageId) {
    const stored = this.custom.get(`${type}|${imageId}`);
    if (stored !== undefined) {
      return stored;
    }
    const ds = this.byImageId.get(imageId);
    return ds ? moduleOf(type, ds) : undefined;
  }
  addCustomMetadata(imageId, type, metadata) {
    this.custom.set(`${type}|${imageId}`, metadata);
  }
}
// core's image loader (it makes the labelmap images) asks the global registry, as in OHIF where the
// MetadataProvider handed to the adapters is registered there too
let current;
cornerstone.metaData.addProvider((type, imageId) => current?.get(type, imageId), 10000);

function sourceStack(segFile, sourceDir, referencedSeries) {
  let entries;
  try {
    entries = fs.readdirSync(sourceDir, { withFileTypes: true }).filter(e => e.isFile());
  } catch (error) {
    throw new Refused(`cannot list ${sourceDir}: ${error.message}`);
  }
  const sources = [];
  for (const entry of entries) {
    const file = path.join(sourceDir, entry.name);
    if (path.resolve(file) === path.resolve(segFile)) {
      continue;
    }
    let ds;
    try {
      ds = readHeader(file);
    } catch (error) {
      process.stderr.write(`read_seg: skipping ${file}: not DICOM (${error.message})\n`);
      continue;
    }
    if (SEG_SOP_CLASSES.has(ds.SOPClassUID)) {
      process.stderr.write(`read_seg: skipping ${file}: a SEG, not a source image\n`);
    } else if (ds.SeriesInstanceUID !== referencedSeries) {
      process.stderr.write(`read_seg: skipping ${file}: of series ${ds.SeriesInstanceUID}\n`);
    } else {
      sources.push(ds);
    }
  }
  if (sources.length === 0) {
    throw new Refused(`no image of the referenced series ${referencedSeries} in ${sourceDir}`);
  }
  // OHIF's stack order, along the slice normal (the reader places frames by UID, then position)
  const [r0, r1, r2, c0, c1, c2] = numbers(sources[0].ImageOrientationPatient);
  const normal = [r1 * c2 - r2 * c1, r2 * c0 - r0 * c2, r0 * c1 - r1 * c0];
  const along = ds => numbers(ds.ImagePositionPatient).reduce((s, v, i) => s + v * normal[i], 0);
  return sources.sort((a, b) => along(a) - along(b));
}

async function readPair(segFile, sourceDir, pairIndex) {
  let segBytes;
  let segHeader;
  try {
    segBytes = fs.readFileSync(segFile);
    segHeader = readHeader(segFile);
  } catch (error) {
    throw new Refused(`${segFile} is not a DICOM file dcmjs reads: ${error.message}`);
  }
  const referencedSeries = first(segHeader.ReferencedSeriesSequence)?.SeriesInstanceUID;
  if (!referencedSeries) {
    throw new Refused(`${segFile} has no ReferencedSeriesSequence (OHIF cannot attach it to a series)`);
  }
  const sources = sourceStack(segFile, sourceDir, referencedSeries);
  const imageIds = sources.map((_, i) => `iterseg:${pairIndex}:${i}`);
  const provider = new MetadataProvider(imageIds, sources);
  current = provider;

  let result;
  try {
    result = await adaptersSEG.Cornerstone3D.Segmentation.createFromDICOMSegBuffer(
      imageIds,
      toArrayBuffer(segBytes),
      { metadataProvider: provider, tolerance: TOLERANCE }
    );
  } catch (error) {
    throw new Refused(`the adapters refused it: ${error.message}`);
  }

  // the multiframe as the adapters normalized it (they register it under their buffer imageId)
  const multiframe = provider.get('instance', BUFFER_SEG_IMAGE_ID);
  const sopToImageId = Object.fromEntries(sources.map((ds, i) => [ds.SOPInstanceUID, imageIds[i]]));
  const placement = (multiframe?.PerFrameFunctionalGroupsSequence ?? []).map((_, i) => {
    const imageId = findReferenceSourceImageId(multiframe, i, imageIds, provider, TOLERANCE, sopToImageId);
    return {
      frame: i + 1,
      segment: getSegmentIndex(multiframe, i) ?? null,
      sop_instance_uid: provider.byImageId.get(imageId)?.SOPInstanceUID ?? null,
    };
  });

  const segments = [];
  (result.segMetadata?.data ?? []).forEach((segment, number) => {
    if (segment && number > 0) {
      segments.push({ number, label: segment.SegmentLabel ?? null });
    }
  });
  const segmentsOnFrame = {};
  (result.segmentsOnFrame ?? []).forEach((list, index) => {
    if (list && list.length) {
      segmentsOnFrame[sources[index].SOPInstanceUID] = [...new Set(list)].sort((a, b) => a - b);
    }
  });

  // the labelmap images: one group when segments do not overlap, several (compacted) when they do;
  // a voxel holds the number of the segment there, 0 for none
  const masks = new Map();
  for (const group of result.labelMapImages ?? []) {
    for (const image of group) {
      const index = imageIds.indexOf(image.referencedImageId);
      if (index === -1) {
        throw new Refused(`a labelmap image references ${image.referencedImageId}, not an image of the stack`);
      }
      const ds = sources[index];
      const data = image.voxelManager ? image.voxelManager.getScalarData() : image.getPixelData();
      const rows = Number(ds.Rows);
      const cols = Number(ds.Columns);
      if (data.length !== rows * cols) {
        throw new Refused(`the labelmap image of ${ds.SOPInstanceUID} has ${data.length} voxels, not ${rows}x${cols}`);
      }
      for (let k = 0; k < data.length; k++) {
        const value = data[k];
        if (value === 0) {
          continue;
        }
        const key = `${ds.SOPInstanceUID}|${value}`;
        let mask = masks.get(key);
        if (!mask) {
          mask = { sop_instance_uid: ds.SOPInstanceUID, segment: value, rows, cols, bits: new Uint8Array(rows * cols) };
          masks.set(key, mask);
        }
        mask.bits[k] = 1;
      }
    }
  }
  cornerstone.cache.purgeCache();

  return {
    segmentation_type: multiframe?.SegmentationType ?? null,
    overlapping_segments: Boolean(result.overlappingSegments),
    segments,
    placement,
    segments_on_frame: segmentsOnFrame,
    masks: [...masks.values()].map(m => ({
      ...m,
      voxels: m.bits.reduce((s, v) => s + v, 0),
      bits: Buffer.from(m.bits).toString('base64'),
    })),
  };
}

let status = 0;
for (let i = 0; i < args.length; i += 2) {
  const [seg, sourceDir] = [args[i], args[i + 1]];
  const head = {
    seg,
    source_dir: sourceDir,
    adapters_version: adaptersVersion,
    dcmjs_version: dcmjsVersion,
    entry_point: 'adaptersSEG.Cornerstone3D.Segmentation.createFromDICOMSegBuffer',
  };
  warnings = [];
  let line;
  try {
    line = { ...head, ...(await readPair(seg, sourceDir, i / 2)), warnings };
  } catch (error) {
    if (!(error instanceof Refused)) {
      process.stderr.write(`${error.stack}\n`);
    }
    process.stderr.write(`read_seg: ${seg}: ${error.message}\n`);
    line = { ...head, error: error.message, warnings };
    status = 1;
  }
  // a pipe takes writes asynchronously: wait for each, or exiting below would cut it short
  await new Promise(resolve => process.stdout.write(`${JSON.stringify(line)}\n`, resolve));
}
// core keeps timers of its own (throttled progress events): do not wait for them
process.exit(status);
