{{/* The trainer pod spec, shared by the single-node Job and every PyTorchJob replica. Call with the root context. */}}
{{- define "lema.trainingPodSpec" -}}
{{- $training := .Values.training -}}
{{- $gpus := dict $training.gpuResource $training.gpusPerNode -}}
restartPolicy: Never
serviceAccountName: {{ include "lema.serviceAccountName" . }}
automountServiceAccountToken: false
enableServiceLinks: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with $training.runtimeClassName }}
runtimeClassName: {{ . }}
{{- end }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
containers:
  {{- /* PyTorchJob requires this container name; the operator passes the rendezvous to torchrun as PET_* env. */}}
  - name: pytorch
    image: {{ include "lema.image" (dict "ctx" . "image" $training.image) }}
    imagePullPolicy: {{ $training.image.pullPolicy }}
    command:
      - torchrun
      {{- if eq (int $training.nodes) 1 }}
      - --standalone
      {{- end }}
      - --nproc-per-node={{ $training.gpusPerNode }}
      - -m
      - lema.training.job
      - --config
      - /etc/lema/train.yaml
    env:
      {{- include "lema.secretEnv" . | nindent 6 }}
    {{- with dig "metrics" "port" nil $training.config }}
    ports:
      - name: metrics
        containerPort: {{ . }}
        protocol: TCP
    {{- end }}
    {{- /* Extended resources such as GPUs cannot be overcommitted: requests equal limits. */}}
    resources:
      requests:
        {{- toYaml (merge (deepCopy $gpus) $training.resources.requests) | nindent 8 }}
      limits:
        {{- toYaml (merge (deepCopy $gpus) (default dict $training.resources.limits)) | nindent 8 }}
    securityContext:
      {{- toYaml .Values.securityContext | nindent 6 }}
    volumeMounts:
      - name: train-config
        mountPath: /etc/lema/train.yaml
        subPath: train.yaml
        readOnly: true
      - name: tmp
        mountPath: /tmp
      - name: cache
        mountPath: /home/lema/.cache
      - name: work
        mountPath: /opt/lema/runs
      - name: dshm
        mountPath: /dev/shm
volumes:
  - name: train-config
    configMap:
      name: {{ include "lema.componentName" (dict "ctx" . "component" "train-config") }}
  - name: tmp
    emptyDir: {}
  - name: cache
    emptyDir: {}
  {{- /* Local checkpoints before upload (run.work_dir, relative to the image's /opt/lema). */}}
  - name: work
    emptyDir: {}
  {{- /* NCCL and the data loader workers share tensors through /dev/shm. */}}
  - name: dshm
    emptyDir:
      medium: Memory
      sizeLimit: {{ $training.shmSize }}
{{- with $training.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $training.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $training.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
