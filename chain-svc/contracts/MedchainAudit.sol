// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity 0.8.30;

/// @title MedchainAudit
/// @notice Tamper-evident, privacy-preserving audit trail of disease-risk predictions, written
///         in batches: one transaction commits to hundreds of records at ~3.5k gas each.
/// @dev Per record the chain holds, in a `PredictionCommitted` event: the prediction id, the
///      patient reference (an HMAC-SHA256 of the patient id under a server secret) and the
///      record hash, keccak256(abi.encode(predictionId, patientRef, modelIdHash,
///      inputCommitment, disease, modality, label, probabilityBps)) — see `hashRecord`. The
///      fields behind the hash travel in the record's receipt and stay in the service's outbox;
///      `inputCommitment` is a SHA-256 of a random salt and the canonical input (salt off chain),
///      so nothing here identifies a patient or reveals an input.
///      A batch is write-once: its id is the hash of its contents, and a batch already recorded
///      is refused (`DuplicateBatch`). The service puts every record in exactly one batch for
///      good and only ever resends that same batch, so a record cannot be committed twice
///      through it; events cannot be changed or removed once mined.
contract MedchainAudit {
    /// One record as committed: what a verifier needs to find it (id, patient) and check it.
    struct Commitment {
        bytes32 predictionId;
        bytes32 patientRef;
        bytes32 recordHash;
    }

    /// One storage slot per batch.
    struct Batch {
        address recorder;
        uint64 timestamp;
        uint32 count;
    }

    /// Most records in one batch (a 5,000-record batch is ~18M gas, within a block's limit).
    uint256 public constant MAX_BATCH = 5_000;

    address public admin;
    uint256 public recordCount;
    mapping(address => bool) public isRecorder;
    mapping(bytes32 => Batch) private batches;

    event PredictionCommitted(
        bytes32 indexed predictionId, bytes32 indexed patientRef, bytes32 recordHash
    );
    event BatchRecorded(
        bytes32 indexed batchId, address indexed recorder, uint32 count, uint64 timestamp
    );
    event RecorderGranted(address indexed account, address indexed by);
    event RecorderRevoked(address indexed account, address indexed by);
    event AdminTransferred(address indexed previousAdmin, address indexed newAdmin);

    error NotAdmin(address caller);
    error NotRecorder(address caller);
    error DuplicateBatch(bytes32 batchId);
    error InvalidBatch(string reason);
    error InvalidRecord(uint256 index, string reason);
    error ZeroAddress();

    modifier onlyAdmin() {
        if (msg.sender != admin) revert NotAdmin(msg.sender);
        _;
    }

    /// @param initialAdmin manages recorders (explicit, so that a CREATE2 factory can deploy).
    /// @param initialRecorder may record from the start (the service's signer); zero for none.
    constructor(address initialAdmin, address initialRecorder) {
        if (initialAdmin == address(0)) revert ZeroAddress();
        admin = initialAdmin;
        emit AdminTransferred(address(0), initialAdmin);
        if (initialRecorder != address(0)) {
            isRecorder[initialRecorder] = true;
            emit RecorderGranted(initialRecorder, initialAdmin);
        }
    }

    /// @notice Commits a batch of records; returns its id (the hash of the batch's contents).
    ///         Reverts for a batch already recorded.
    function recordBatch(Commitment[] calldata items) external returns (bytes32 batchId) {
        if (!isRecorder[msg.sender]) revert NotRecorder(msg.sender);
        uint256 n = items.length;
        if (n == 0) revert InvalidBatch("empty batch");
        if (n > MAX_BATCH) revert InvalidBatch("more than MAX_BATCH records");
        batchId = keccak256(abi.encode(items));
        if (batches[batchId].timestamp != 0) revert DuplicateBatch(batchId);
        for (uint256 i = 0; i < n; ) {
            Commitment calldata c = items[i];
            if (c.predictionId == bytes32(0)) revert InvalidRecord(i, "prediction id is zero");
            if (c.recordHash == bytes32(0)) revert InvalidRecord(i, "record hash is zero");
            emit PredictionCommitted(c.predictionId, c.patientRef, c.recordHash);
            unchecked {
                ++i;
            }
        }
        uint64 ts = uint64(block.timestamp);
        batches[batchId] = Batch({recorder: msg.sender, timestamp: ts, count: uint32(n)});
        unchecked {
            recordCount += n;
        }
        emit BatchRecorded(batchId, msg.sender, uint32(n), ts);
    }

    /// @notice The batch of an id; `timestamp == 0` means none.
    function getBatch(bytes32 batchId) external view returns (Batch memory) {
        return batches[batchId];
    }

    /// @notice The record hash a `PredictionCommitted` event carries, from the record's fields
    ///         (disease 1 = diabetes, 2 = heart; modality 1 = tabular, 2 = image; the
    ///         probability of the predicted class in basis points).
    function hashRecord(
        bytes32 predictionId,
        bytes32 patientRef,
        bytes32 modelIdHash,
        bytes32 inputCommitment,
        uint8 disease,
        uint8 modality,
        uint8 label,
        uint16 probabilityBps
    ) external pure returns (bytes32) {
        return keccak256(
            abi.encode(
                predictionId, patientRef, modelIdHash, inputCommitment, disease, modality, label,
                probabilityBps
            )
        );
    }

    function grantRecorder(address account) external onlyAdmin {
        if (account == address(0)) revert ZeroAddress();
        isRecorder[account] = true;
        emit RecorderGranted(account, msg.sender);
    }

    function revokeRecorder(address account) external onlyAdmin {
        isRecorder[account] = false;
        emit RecorderRevoked(account, msg.sender);
    }

    function transferAdmin(address newAdmin) external onlyAdmin {
        if (newAdmin == address(0)) revert ZeroAddress();
        emit AdminTransferred(admin, newAdmin);
        admin = newAdmin;
    }
}
