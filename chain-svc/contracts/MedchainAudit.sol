// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity 0.8.30;

/// @title MedchainAudit
/// @notice Tamper-evident, privacy-preserving audit trail of disease-risk predictions.
/// @dev Nothing here identifies a patient or reveals an input: `patientRef` is an HMAC-SHA256
///      of the patient id under a server secret, `inputCommitment` a SHA-256 of a random salt and
///      the canonical input (salt kept off chain), `modelIdHash` a SHA-256 of the model id, version and file hash.
///      Records are write-once: a prediction id can be recorded one time only.
contract MedchainAudit {
    struct Record {
        bytes32 patientRef;
        bytes32 modelIdHash;
        bytes32 inputCommitment;
        uint64 timestamp;
        address recorder;
        uint16 probabilityBps;
        uint8 disease;
        uint8 modality;
        uint8 label;
    }

    /// 1 = diabetes, 2 = heart
    uint8 public constant MAX_DISEASE = 2;
    /// 1 = tabular, 2 = image
    uint8 public constant MAX_MODALITY = 2;

    address public admin;
    uint256 public recordCount;
    mapping(address => bool) public isRecorder;
    mapping(bytes32 => Record) private records;

    event PredictionRecorded(
        bytes32 indexed predictionId,
        bytes32 indexed patientRef,
        address indexed recorder,
        bytes32 modelIdHash,
        bytes32 inputCommitment,
        uint8 disease,
        uint8 modality,
        uint8 label,
        uint16 probabilityBps,
        uint64 timestamp
    );
    event RecorderGranted(address indexed account, address indexed by);
    event RecorderRevoked(address indexed account, address indexed by);
    event AdminTransferred(address indexed previousAdmin, address indexed newAdmin);

    error NotAdmin(address caller);
    error NotRecorder(address caller);
    error DuplicatePrediction(bytes32 predictionId);
    error InvalidRecord(string reason);
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

    /// @notice Records one prediction. Reverts for a prediction id already recorded.
    function record(
        bytes32 predictionId,
        bytes32 patientRef,
        bytes32 modelIdHash,
        bytes32 inputCommitment,
        uint8 disease,
        uint8 modality,
        uint8 label,
        uint16 probabilityBps
    ) external {
        if (!isRecorder[msg.sender]) revert NotRecorder(msg.sender);
        if (predictionId == bytes32(0)) revert InvalidRecord("prediction id is zero");
        if (records[predictionId].timestamp != 0) revert DuplicatePrediction(predictionId);
        if (disease == 0 || disease > MAX_DISEASE) revert InvalidRecord("unknown disease");
        if (modality == 0 || modality > MAX_MODALITY) revert InvalidRecord("unknown modality");
        if (probabilityBps > 10_000) revert InvalidRecord("probability above 10000 bps");
        if (inputCommitment == bytes32(0)) revert InvalidRecord("input commitment is zero");
        uint64 ts = uint64(block.timestamp);
        records[predictionId] = Record({
            patientRef: patientRef,
            modelIdHash: modelIdHash,
            inputCommitment: inputCommitment,
            timestamp: ts,
            recorder: msg.sender,
            probabilityBps: probabilityBps,
            disease: disease,
            modality: modality,
            label: label
        });
        unchecked {
            recordCount += 1;
        }
        emit PredictionRecorded(
            predictionId, patientRef, msg.sender, modelIdHash, inputCommitment, disease, modality,
            label, probabilityBps, ts
        );
    }

    /// @notice The record of a prediction id; `timestamp == 0` means none.
    function getRecord(bytes32 predictionId) external view returns (Record memory) {
        return records[predictionId];
    }

    /// @notice Whether a prediction id has been recorded.
    function exists(bytes32 predictionId) external view returns (bool) {
        return records[predictionId].timestamp != 0;
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
