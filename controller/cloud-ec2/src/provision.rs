//! Provisioning on EC2: spares, replacement volumes, a dead server's volumes
//! moved to a spare ([`understudy_cloud::provision`]).
//!
//! - Launch zone: the availability zone of the subnet spares launch in
//!   (`DescribeSubnets`). The subnet is `subnet_id` from the configuration, else
//!   the launch template's first network interface's (`DescribeLaunchTemplateVersions`),
//!   else the template's `Placement` zone is taken as is; with none of them the
//!   launch is refused with what to set.
//! - Launch: the zone is checked first (a spare elsewhere could never attach the
//!   pair's volumes: refused, naming both zones, before any change). Then an
//!   instance already tagged `understudy:client-token = TOKEN` and not
//!   terminated is looked for (`DescribeInstances`): EC2 keeps client tokens for
//!   a limited time only, and moto ignores them. Found with other tags or in
//!   another zone: refused as EC2 refuses a token reused with other parameters.
//!   Else `RunInstances` (one instance, `ClientToken`, the template or the image
//!   and type, subnet and groups if configured, the request's tags and the token
//!   tag on the instance and its volumes). An instance that comes up in another
//!   zone than asked is terminated and reported.
//! - Volumes: `CreateVolume` (`ClientToken`, zone, size, `volume_type`, tags and
//!   the token tag) after the same token-tag lookup (`DescribeVolumes`).
//!   Attaching is checked here first, since moto accepts attaching a volume
//!   that is attached elsewhere and ignores zones: the volume must be
//!   `available` and in the instance's zone, the instance `running` or
//!   `stopped`, the device free; attaching it again to the same instance as the
//!   same device changes nothing. Detaching (`Force` if asked) needs the volume
//!   attached to that instance.
//! - Termination is idempotent: an unknown or terminated instance is fine.

use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{
    Filter, Instance as SdkInstance, InstanceType, LaunchTemplateSpecification, ResourceType,
    ResponseLaunchTemplateData, TagSpecification, VolumeType,
};
use understudy_cloud::provision::{check_client_token, check_tags, has_tags, merge_tags, tags};
use understudy_cloud::{
    CloudError, Instance, InstanceState, LaunchRequest, Tag, Volume, VolumeAttachment,
    VolumeFilter, VolumeRequest, VolumeState,
};

use crate::{map_sdk_error, state_from_word, Ec2Cloud, Ec2Config, PROVIDER, VOLUME_TYPES};

/// What spares launch from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LaunchSource {
    /// A launch template and its version (`None`: the template's default).
    Template { id: String, version: Option<String> },
    /// An image and instance type (in `subnet_id`).
    Image {
        image_id: String,
        instance_type: String,
    },
}

impl LaunchSource {
    /// Check the launch keys of the configuration; `None`: nothing to launch
    /// from (launching is refused, volumes still work).
    pub(crate) fn from_config(cfg: &Ec2Config) -> Result<Option<LaunchSource>, String> {
        if !VOLUME_TYPES.contains(&cfg.volume_type.as_str()) {
            let hint = if matches!(cfg.volume_type.as_str(), "io1" | "io2") {
                " (io1 and io2 need provisioned IOPS, which Understudy does not set)"
            } else {
                ""
            };
            return Err(format!(
                "volume_type {:?} is not one of {VOLUME_TYPES:?}{hint}; use \"gp3\" (the default)",
                cfg.volume_type
            ));
        }
        if let Some(s) = &cfg.subnet_id {
            if !s.starts_with("subnet-") {
                return Err(format!("subnet_id {s:?} is not a subnet id (subnet-...)"));
            }
        }
        if let Some(g) = cfg
            .security_group_ids
            .iter()
            .find(|g| !g.starts_with("sg-"))
        {
            return Err(format!(
                "security_group_ids has {g:?}, which is not a security group id (sg-...)"
            ));
        }
        match (&cfg.launch_template_id, &cfg.image_id) {
            (Some(_), Some(_)) => Err(
                "both launch_template_id and image_id are set; set one: a launch template, or an image with instance_type and subnet_id"
                    .into(),
            ),
            (Some(id), None) => {
                if !id.starts_with("lt-") {
                    return Err(format!(
                        "launch_template_id {id:?} is not a launch template id (lt-...)"
                    ));
                }
                if cfg.instance_type.is_some() {
                    return Err(
                        "instance_type goes with image_id; with launch_template_id the template sets the instance type: remove instance_type"
                            .into(),
                    );
                }
                if let Some(v) = &cfg.launch_template_version {
                    let number = v.parse::<u64>().map(|n| n > 0).unwrap_or(false);
                    if !(number || v == "$Default" || v == "$Latest") {
                        return Err(format!(
                            "launch_template_version {v:?} is not \"$Default\", \"$Latest\" or a version number"
                        ));
                    }
                }
                Ok(Some(LaunchSource::Template {
                    id: id.clone(),
                    version: cfg.launch_template_version.clone(),
                }))
            }
            (None, Some(image)) => {
                if !image.starts_with("ami-") {
                    return Err(format!("image_id {image:?} is not an image id (ami-...)"));
                }
                if cfg.launch_template_version.is_some() {
                    return Err(
                        "launch_template_version is set without launch_template_id; remove it"
                            .into(),
                    );
                }
                let instance_type = match &cfg.instance_type {
                    Some(t) if !t.trim().is_empty() => t.clone(),
                    _ => {
                        return Err(format!(
                            "image_id {image} needs instance_type (e.g. \"m6i.large\")"
                        ))
                    }
                };
                if cfg.subnet_id.is_none() {
                    return Err(format!(
                        "image_id {image} needs subnet_id: the subnet (in the pairs' zone) spares launch in"
                    ));
                }
                Ok(Some(LaunchSource::Image {
                    image_id: image.clone(),
                    instance_type,
                }))
            }
            (None, None) => {
                let stray: Vec<&str> = [
                    ("instance_type", cfg.instance_type.is_some()),
                    ("launch_template_version", cfg.launch_template_version.is_some()),
                    ("subnet_id", cfg.subnet_id.is_some()),
                    ("security_group_ids", !cfg.security_group_ids.is_empty()),
                ]
                .into_iter()
                .filter(|(_, set)| *set)
                .map(|(k, _)| k)
                .collect();
                if stray.is_empty() {
                    Ok(None)
                } else {
                    Err(format!(
                        "{} set without launch_template_id or image_id, so no spare could be launched; set one of them, or remove {}",
                        stray.join(", "),
                        if stray.len() == 1 { "it" } else { "them" }
                    ))
                }
            }
        }
    }

    /// In words, for messages.
    fn describe(&self) -> String {
        match self {
            LaunchSource::Template { id, version } => format!(
                "launch template {id} version {}",
                version.as_deref().unwrap_or("$Default")
            ),
            LaunchSource::Image { image_id, .. } => format!("image {image_id}"),
        }
    }
}

/// Where spares launch, and why (for messages).
#[derive(Debug, Clone)]
struct LaunchTarget {
    zone: String,
    /// `subnet_id subnet-1`, `subnet subnet-1 of launch template lt-1 version
    /// $Default`, ...
    from: String,
}

fn refused(op: &'static str, reason: String) -> CloudError {
    CloudError::Refused {
        provider: PROVIDER,
        op,
        reason,
    }
}

fn transient(op: &'static str, reason: String) -> CloudError {
    CloudError::Transient {
        provider: PROVIDER,
        op,
        reason,
    }
}

fn sdk_tags(tags: &[Tag]) -> Vec<aws_sdk_ec2::types::Tag> {
    tags.iter()
        .map(|(k, v)| aws_sdk_ec2::types::Tag::builder().key(k).value(v).build())
        .collect()
}

fn tags_from_sdk(tags: &[aws_sdk_ec2::types::Tag]) -> Vec<Tag> {
    tags.iter()
        .filter_map(|t| Some((t.key()?.to_string(), t.value().unwrap_or("").to_string())))
        .collect()
}

fn tag_spec(kind: ResourceType, tags: &[Tag]) -> TagSpecification {
    TagSpecification::builder()
        .resource_type(kind)
        .set_tags(Some(sdk_tags(tags)))
        .build()
}

/// The request's tags plus the client-token tag.
fn with_token(tags: &[Tag], token: &str) -> Vec<Tag> {
    let mut all = tags.to_vec();
    all.push((tags::CLIENT_TOKEN.to_string(), token.to_string()));
    all
}

fn token_filter(token: &str) -> Filter {
    Filter::builder()
        .name(format!("tag:{}", tags::CLIENT_TOKEN))
        .values(token)
        .build()
}

/// An instance as the cloud interface describes it: its primary interface
/// (device index 0) is the one that will carry the client IP.
fn instance_from_sdk(i: &SdkInstance) -> Instance {
    let nis = i.network_interfaces();
    let primary = nis
        .iter()
        .find(|n| n.attachment().and_then(|a| a.device_index()) == Some(0))
        .or_else(|| nis.first());
    Instance {
        instance_id: i.instance_id().unwrap_or_default().to_string(),
        interface_id: primary
            .and_then(|n| n.network_interface_id())
            .unwrap_or_default()
            .to_string(),
        private_ip: i
            .private_ip_address()
            .or_else(|| primary.and_then(|n| n.private_ip_address()))
            .unwrap_or_default()
            .to_string(),
        zone: i
            .placement()
            .and_then(|p| p.availability_zone())
            .unwrap_or_default()
            .to_string(),
        state: i
            .state()
            .and_then(|s| s.name())
            .map(|n| state_from_word(n.as_str()))
            .unwrap_or_else(|| InstanceState::Other("unreported".into())),
        tags: tags_from_sdk(i.tags()),
    }
}

fn volume_from_sdk(v: &aws_sdk_ec2::types::Volume) -> Volume {
    Volume {
        volume_id: v.volume_id().unwrap_or_default().to_string(),
        zone: v.availability_zone().unwrap_or_default().to_string(),
        size_gib: v.size().unwrap_or(0).max(0) as u64,
        state: v
            .state()
            .map(|s| VolumeState::from_word(s.as_str()))
            .unwrap_or_else(|| VolumeState::Other("unreported".into())),
        attachments: v
            .attachments()
            .iter()
            .map(|a| VolumeAttachment {
                instance_id: a.instance_id().unwrap_or_default().to_string(),
                device: a.device().unwrap_or_default().to_string(),
                state: a
                    .state()
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_default(),
            })
            .collect(),
        tags: tags_from_sdk(v.tags()),
    }
}

/// The instances of `attachments`, for messages.
fn attached_list(v: &Volume) -> String {
    if v.attachments.is_empty() {
        return "no instance".into();
    }
    v.attachments
        .iter()
        .map(|a| format!("{} as {} ({})", a.instance_id, a.device, a.state))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The tags of `wanted` that `have` lacks or has with another value, in words
/// (`understudy:pair=fs1 (asked: fs2)`).
fn tag_differences(have: &[Tag], wanted: &[Tag]) -> Vec<String> {
    wanted
        .iter()
        .filter_map(
            |(k, v)| match have.iter().find(|(hk, _)| hk == k).map(|(_, hv)| hv) {
                Some(hv) if hv == v => None,
                Some(hv) => Some(format!("{k}={hv} (asked: {v})")),
                None => Some(format!("no tag {k} (asked: {v})")),
            },
        )
        .collect()
}

/// Gone or going: not a usable result of a token lookup.
fn gone(state: &InstanceState) -> bool {
    matches!(
        state,
        InstanceState::ShuttingDown | InstanceState::Terminated
    )
}

impl Ec2Cloud {
    /// Where spares launch: see the module documentation.
    async fn launch_target(&self, op: &'static str) -> Result<LaunchTarget, CloudError> {
        let Some(source) = &self.launch else {
            return Err(refused(
                op,
                "no launch configuration: set launch_template_id (or image_id, instance_type and subnet_id) in the ec2 configuration to launch spares".into(),
            ));
        };
        let (subnet, from) = match source {
            LaunchSource::Image { .. } => {
                let s = self
                    .subnet_id
                    .clone()
                    .expect("image_id without subnet_id is refused at construction");
                let from = format!("subnet_id {s}");
                (s, from)
            }
            LaunchSource::Template { id, version } => {
                let version = version.as_deref().unwrap_or("$Default");
                let data = self.template_data(op, id, version).await?;
                let nis = data.network_interfaces();
                if !nis.is_empty()
                    && (self.subnet_id.is_some() || !self.security_group_ids.is_empty())
                {
                    return Err(refused(
                        op,
                        format!(
                            "launch template {id} version {version} has network interfaces, and EC2 refuses an instance-level subnet or security groups with them; remove subnet_id and security_group_ids from the ec2 configuration, or the network interfaces from the template"
                        ),
                    ));
                }
                let ni = nis
                    .iter()
                    .find(|n| n.device_index() == Some(0))
                    .or_else(|| nis.first());
                match (&self.subnet_id, ni.and_then(|n| n.subnet_id())) {
                    (Some(s), _) => (s.clone(), format!("subnet_id {s}")),
                    (None, Some(s)) => (
                        s.to_string(),
                        format!("subnet {s} of launch template {id} version {version}"),
                    ),
                    (None, None) => {
                        return match data.placement().and_then(|p| p.availability_zone()) {
                            Some(z) if !z.is_empty() => Ok(LaunchTarget {
                                zone: z.to_string(),
                                from: format!(
                                    "the placement of launch template {id} version {version}"
                                ),
                            }),
                            _ => Err(refused(
                                op,
                                format!(
                                    "launch template {id} version {version} names no subnet (NetworkInterfaces[0].SubnetId) and no availability zone (Placement), so the zone spares would launch in is unknown; set subnet_id in the ec2 configuration, or a subnet in the template"
                                ),
                            )),
                        };
                    }
                }
            }
        };
        let zone = self.subnet_zone(op, &subnet, &from).await?;
        Ok(LaunchTarget { zone, from })
    }

    /// The launch template's data (`DescribeLaunchTemplateVersions`).
    async fn template_data(
        &self,
        op: &'static str,
        id: &str,
        version: &str,
    ) -> Result<ResponseLaunchTemplateData, CloudError> {
        const CALL: &str = "DescribeLaunchTemplateVersions";
        let r = self
            .timed(
                op,
                CALL,
                self.client
                    .describe_launch_template_versions()
                    .launch_template_id(id)
                    .versions(version)
                    .send(),
            )
            .await?;
        let out = match r {
            Ok(out) => out,
            Err(e) => {
                let code = e.code().unwrap_or("");
                if code.starts_with("InvalidLaunchTemplate") {
                    return Err(refused(
                        op,
                        format!(
                            "launch template {id} version {version} cannot be read ({code}: {}); fix launch_template_id or launch_template_version in the ec2 configuration",
                            e.message().unwrap_or("no message")
                        ),
                    ));
                }
                return Err(map_sdk_error(op, CALL, id, &e));
            }
        };
        out.launch_template_versions()
            .iter()
            .find(|v| v.launch_template_id() == Some(id))
            .or_else(|| out.launch_template_versions().first())
            .and_then(|v| v.launch_template_data())
            .cloned()
            .ok_or_else(|| {
                refused(
                    op,
                    format!(
                        "EC2 lists no version {version} of launch template {id}; fix launch_template_id or launch_template_version in the ec2 configuration"
                    ),
                )
            })
    }

    /// The zone of `subnet` (`DescribeSubnets`, remembered).
    async fn subnet_zone(
        &self,
        op: &'static str,
        subnet: &str,
        from: &str,
    ) -> Result<String, CloudError> {
        const CALL: &str = "DescribeSubnets";
        if let Some(z) = self.subnet_zones.lock().unwrap().get(subnet) {
            return Ok(z.clone());
        }
        let r = self
            .timed(
                op,
                CALL,
                self.client.describe_subnets().subnet_ids(subnet).send(),
            )
            .await?;
        let not_found = |why: String| {
            refused(
                op,
                format!(
                    "{from} cannot be found ({why}); fix subnet_id or the launch template's subnet"
                ),
            )
        };
        let out = match r {
            Ok(out) => out,
            Err(e) if e.code().unwrap_or("").starts_with("InvalidSubnetID") => {
                return Err(not_found(format!(
                    "{}: {}",
                    e.code().unwrap_or(""),
                    e.message().unwrap_or("no message")
                )))
            }
            Err(e) => return Err(map_sdk_error(op, CALL, subnet, &e)),
        };
        let zone = out
            .subnets()
            .iter()
            .find(|s| s.subnet_id() == Some(subnet))
            .ok_or_else(|| not_found("DescribeSubnets does not list it".into()))?
            .availability_zone()
            .filter(|z| !z.is_empty())
            .ok_or_else(|| transient(op, format!("DescribeSubnets reports no zone for {subnet}")))?
            .to_string();
        self.subnet_zones
            .lock()
            .unwrap()
            .insert(subnet.to_string(), zone.clone());
        Ok(zone)
    }

    /// `DescribeInstances`: `Ok(None)` if EC2 does not know the instance.
    async fn sdk_instance(
        &self,
        op: &'static str,
        instance_id: &str,
    ) -> Result<Option<SdkInstance>, CloudError> {
        const CALL: &str = "DescribeInstances";
        let r = self
            .timed(
                op,
                CALL,
                self.client
                    .describe_instances()
                    .instance_ids(instance_id)
                    .send(),
            )
            .await?;
        match r {
            Ok(out) => Ok(out
                .reservations()
                .iter()
                .flat_map(|r| r.instances())
                .find(|i| i.instance_id() == Some(instance_id))
                .cloned()),
            Err(e) if e.code() == Some("InvalidInstanceID.NotFound") => Ok(None),
            Err(e) => Err(map_sdk_error(op, CALL, instance_id, &e)),
        }
    }

    /// The instance launched with `token` and not terminated, if any.
    async fn instance_by_token(
        &self,
        op: &'static str,
        token: &str,
    ) -> Result<Option<Instance>, CloudError> {
        let mut found: Vec<(Option<aws_sdk_ec2::primitives::DateTime>, Instance)> = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let page = self
                .call(
                    op,
                    "DescribeInstances",
                    token,
                    self.client
                        .describe_instances()
                        .filters(token_filter(token))
                        .set_next_token(next.take())
                        .send(),
                )
                .await?;
            for i in page.reservations().iter().flat_map(|r| r.instances()) {
                let inst = instance_from_sdk(i);
                // The filter is EC2's; check the tag here too.
                if inst.tag(tags::CLIENT_TOKEN) == Some(token) && !gone(&inst.state) {
                    found.push((i.launch_time().cloned(), inst));
                }
            }
            match page.next_token() {
                Some(t) if !t.is_empty() => next = Some(t.to_string()),
                _ => break,
            }
        }
        if found.len() > 1 {
            tracing::warn!(
                token,
                instances = ?found.iter().map(|(_, i)| i.instance_id.as_str()).collect::<Vec<_>>(),
                "several instances carry one client token; using the oldest"
            );
        }
        found.sort_by(|a, b| {
            let key = |x: &Option<aws_sdk_ec2::primitives::DateTime>| {
                x.map(|t| (t.secs(), t.subsec_nanos()))
            };
            key(&a.0)
                .cmp(&key(&b.0))
                .then_with(|| a.1.instance_id.cmp(&b.1.instance_id))
        });
        Ok(found.into_iter().next().map(|(_, i)| i))
    }

    /// `DescribeVolumes` with these ids and filters, all pages.
    async fn volumes(
        &self,
        op: &'static str,
        id: &str,
        volume_ids: &[String],
        filters: Vec<Filter>,
    ) -> Result<Vec<Volume>, CloudError> {
        let mut out = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let page = self
                .call(
                    op,
                    "DescribeVolumes",
                    id,
                    self.client
                        .describe_volumes()
                        .set_volume_ids((!volume_ids.is_empty()).then(|| volume_ids.to_vec()))
                        .set_filters((!filters.is_empty()).then(|| filters.clone()))
                        .set_next_token(next.take())
                        .send(),
                )
                .await?;
            out.extend(page.volumes().iter().map(volume_from_sdk));
            match page.next_token() {
                Some(t) if !t.is_empty() => next = Some(t.to_string()),
                _ => return Ok(out),
            }
        }
    }

    /// One volume, or `NotFound`.
    async fn volume(&self, op: &'static str, volume_id: &str) -> Result<Volume, CloudError> {
        self.volumes(op, volume_id, &[volume_id.to_string()], Vec::new())
            .await?
            .into_iter()
            .find(|v| v.volume_id == volume_id)
            .ok_or_else(|| CloudError::NotFound {
                provider: PROVIDER,
                what: "volume",
                id: volume_id.to_string(),
            })
    }
}

/// See [`understudy_cloud::Cloud::launch_zone`].
pub(crate) async fn launch_zone(c: &Ec2Cloud) -> Result<String, CloudError> {
    Ok(c.launch_target("launch_zone").await?.zone)
}

/// See [`understudy_cloud::Cloud::launch_instance`] and the module documentation.
pub(crate) async fn launch_instance(
    c: &Ec2Cloud,
    req: &LaunchRequest,
) -> Result<Instance, CloudError> {
    const OP: &str = "launch_instance";
    check_client_token(PROVIDER, OP, &req.client_token)?;
    check_tags(PROVIDER, OP, &req.tags)?;
    let target = c.launch_target(OP).await?;
    if target.zone != req.zone {
        return Err(refused(
            OP,
            format!(
                "spares launch in zone {} ({}) but this one must run in zone {}, where the pair's volumes are; a spare in {} could never attach them: point the launch template (or subnet_id) at a subnet of {}",
                target.zone, target.from, req.zone, target.zone, req.zone
            ),
        ));
    }
    let token = &req.client_token;
    if let Some(found) = c.instance_by_token(OP, token).await? {
        if found.zone != req.zone || !has_tags(&found.tags, &req.tags) {
            let mut diff = tag_differences(&found.tags, &req.tags);
            if found.zone != req.zone {
                diff.insert(0, format!("zone {} (asked: {})", found.zone, req.zone));
            }
            return Err(refused(
                OP,
                format!(
                    "client token {token} already launched instance {} with other parameters: {}; a different request needs a new token",
                    found.instance_id,
                    diff.join(", ")
                ),
            ));
        }
        tracing::info!(token = %token, instance = %found.instance_id, "launch already made with this client token");
        return Ok(found);
    }
    let all_tags = with_token(&req.tags, token);
    let mut run = c
        .client
        .run_instances()
        .min_count(1)
        .max_count(1)
        .client_token(token)
        .tag_specifications(tag_spec(ResourceType::Instance, &all_tags))
        .tag_specifications(tag_spec(ResourceType::Volume, &all_tags));
    run = match c.launch.as_ref().expect("launch_target checked it") {
        LaunchSource::Template { id, version } => run.launch_template(
            LaunchTemplateSpecification::builder()
                .launch_template_id(id)
                .set_version(version.clone())
                .build(),
        ),
        LaunchSource::Image {
            image_id,
            instance_type,
        } => run
            .image_id(image_id)
            .instance_type(InstanceType::from(instance_type.as_str())),
    };
    if let Some(s) = &c.subnet_id {
        run = run.subnet_id(s);
    }
    if !c.security_group_ids.is_empty() {
        run = run.set_security_group_ids(Some(c.security_group_ids.clone()));
    }
    tracing::info!(token = %token, zone = %req.zone, from = %c.launch.as_ref().map(LaunchSource::describe).unwrap_or_default(), "launching an instance");
    let out = c.call(OP, "RunInstances", token, run.send()).await?;
    let Some(sdk) = out.instances().first() else {
        return Err(transient(
            OP,
            format!("RunInstances with client token {token} returned no instance; the step will be retried with the same token"),
        ));
    };
    let mut inst = instance_from_sdk(sdk);
    // The answer may leave the tags out; they were asked for.
    merge_tags(&mut inst.tags, &all_tags);
    if !inst.zone.is_empty() && inst.zone != req.zone {
        let id = inst.instance_id.clone();
        let cleanup = match terminate_instance(c, &id).await {
            Ok(()) => "it has been terminated".to_string(),
            Err(e) => format!("terminating it failed ({e}): terminate it by hand"),
        };
        return Err(CloudError::Unverified {
            provider: PROVIDER,
            op: OP,
            reason: format!(
                "instance {id} came up in zone {}, not in zone {} as {} says; {cleanup}; check the launch template's subnet and placement",
                inst.zone, req.zone, target.from
            ),
        });
    }
    tracing::info!(instance = %inst.instance_id, zone = %inst.zone, state = %inst.state, "instance launched");
    Ok(inst)
}

/// See [`understudy_cloud::Cloud::describe_instance`].
pub(crate) async fn describe_instance(
    c: &Ec2Cloud,
    instance_id: &str,
) -> Result<Option<Instance>, CloudError> {
    Ok(c.sdk_instance("describe_instance", instance_id)
        .await?
        .map(|i| instance_from_sdk(&i)))
}

/// See [`understudy_cloud::Cloud::terminate_instance`].
pub(crate) async fn terminate_instance(c: &Ec2Cloud, instance_id: &str) -> Result<(), CloudError> {
    const OP: &str = "terminate_instance";
    const CALL: &str = "TerminateInstances";
    tracing::info!(instance = %instance_id, "terminating an instance");
    let r = c
        .timed(
            OP,
            CALL,
            c.client
                .terminate_instances()
                .instance_ids(instance_id)
                .send(),
        )
        .await?;
    match r {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some("InvalidInstanceID.NotFound") => Ok(()),
        Err(e) => Err(map_sdk_error(OP, CALL, instance_id, &e)),
    }
}

/// See [`understudy_cloud::Cloud::create_volume`] and the module documentation.
pub(crate) async fn create_volume(c: &Ec2Cloud, req: &VolumeRequest) -> Result<Volume, CloudError> {
    const OP: &str = "create_volume";
    check_client_token(PROVIDER, OP, &req.client_token)?;
    check_tags(PROVIDER, OP, &req.tags)?;
    let size = match i32::try_from(req.size_gib) {
        Ok(s) if s > 0 => s,
        _ => {
            return Err(refused(
                OP,
                format!("a volume of {} GiB cannot be created", req.size_gib),
            ))
        }
    };
    if req.zone.is_empty() {
        return Err(refused(OP, "no zone given for the volume".into()));
    }
    let token = &req.client_token;
    let found = c
        .volumes(OP, token, &[], vec![token_filter(token)])
        .await?
        .into_iter()
        .filter(|v| v.tag(tags::CLIENT_TOKEN) == Some(token.as_str()))
        .filter(|v| !matches!(v.state, VolumeState::Deleting | VolumeState::Deleted))
        .min_by(|a, b| a.volume_id.cmp(&b.volume_id));
    if let Some(v) = found {
        if v.zone != req.zone || v.size_gib != req.size_gib || !has_tags(&v.tags, &req.tags) {
            let mut diff = tag_differences(&v.tags, &req.tags);
            if v.size_gib != req.size_gib {
                diff.insert(0, format!("{} GiB (asked: {})", v.size_gib, req.size_gib));
            }
            if v.zone != req.zone {
                diff.insert(0, format!("zone {} (asked: {})", v.zone, req.zone));
            }
            return Err(refused(
                OP,
                format!(
                    "client token {token} already created volume {} with other parameters: {}; a different request needs a new token",
                    v.volume_id,
                    diff.join(", ")
                ),
            ));
        }
        tracing::info!(token = %token, volume = %v.volume_id, "volume already created with this client token");
        return Ok(v);
    }
    let all_tags = with_token(&req.tags, token);
    tracing::info!(token = %token, zone = %req.zone, size_gib = req.size_gib, volume_type = %c.volume_type, "creating a volume");
    let out = c
        .call(
            OP,
            "CreateVolume",
            token,
            c.client
                .create_volume()
                .client_token(token)
                .availability_zone(&req.zone)
                .size(size)
                .volume_type(VolumeType::from(c.volume_type.as_str()))
                .tag_specifications(tag_spec(ResourceType::Volume, &all_tags))
                .send(),
        )
        .await?;
    let Some(id) = out.volume_id() else {
        return Err(transient(
            OP,
            format!("CreateVolume with client token {token} returned no volume id; the step will be retried with the same token"),
        ));
    };
    let mut tags = tags_from_sdk(out.tags());
    merge_tags(&mut tags, &all_tags);
    Ok(Volume {
        volume_id: id.to_string(),
        zone: out.availability_zone().unwrap_or(&req.zone).to_string(),
        size_gib: out.size().map(|s| s.max(0) as u64).unwrap_or(req.size_gib),
        state: out
            .state()
            .map(|s| VolumeState::from_word(s.as_str()))
            .unwrap_or(VolumeState::Creating),
        attachments: Vec::new(),
        tags,
    })
}

/// See [`understudy_cloud::Cloud::describe_volumes`]. An unknown volume id is
/// `NotFound`, as EC2 answers.
pub(crate) async fn describe_volumes(
    c: &Ec2Cloud,
    filter: &VolumeFilter,
) -> Result<Vec<Volume>, CloudError> {
    let mut filters = Vec::new();
    if let Some(i) = &filter.attached_to {
        filters.push(
            Filter::builder()
                .name("attachment.instance-id")
                .values(i)
                .build(),
        );
    }
    let id = match (&filter.attached_to, filter.volume_ids.as_slice()) {
        (_, [one]) => one.clone(),
        (Some(i), _) => i.clone(),
        _ => "volumes".into(),
    };
    let mut out: Vec<Volume> = c
        .volumes("describe_volumes", &id, &filter.volume_ids, filters)
        .await?
        .into_iter()
        // The filters are EC2's; apply them here too.
        .filter(|v| filter.volume_ids.is_empty() || filter.volume_ids.contains(&v.volume_id))
        .filter(|v| match &filter.attached_to {
            Some(i) => v.attachments.iter().any(|a| &a.instance_id == i),
            None => true,
        })
        .collect();
    out.sort_by(|a, b| a.volume_id.cmp(&b.volume_id));
    Ok(out)
}

/// See [`understudy_cloud::Cloud::attach_volume`] and the module documentation.
pub(crate) async fn attach_volume(
    c: &Ec2Cloud,
    volume_id: &str,
    instance_id: &str,
    device: &str,
) -> Result<(), CloudError> {
    const OP: &str = "attach_volume";
    let (v, inst) = tokio::try_join!(c.volume(OP, volume_id), c.sdk_instance(OP, instance_id))?;
    let Some(inst) = inst else {
        return Err(CloudError::NotFound {
            provider: PROVIDER,
            what: "instance",
            id: instance_id.to_string(),
        });
    };
    if let Some(a) = v.attachments.iter().find(|a| a.instance_id == instance_id) {
        if a.device == device && matches!(a.state.as_str(), "attaching" | "attached") {
            return Ok(());
        }
        return Err(refused(
            OP,
            format!(
                "volume {volume_id} is already attached to {instance_id} as {} ({}), not as {device}; detach it first",
                a.device, a.state
            ),
        ));
    }
    if v.state != VolumeState::Available || !v.attachments.is_empty() {
        return Err(refused(
            OP,
            format!(
                "volume {volume_id} is {}, attached to {}; only an available volume is attached: detach it from its instance first (forced if that instance is dead)",
                v.state,
                attached_list(&v)
            ),
        ));
    }
    let view = instance_from_sdk(&inst);
    match view.state {
        InstanceState::Running | InstanceState::Stopped => {}
        InstanceState::Pending => {
            return Err(transient(
                OP,
                format!("instance {instance_id} is still pending"),
            ))
        }
        ref st => {
            return Err(refused(
                OP,
                format!(
                    "instance {instance_id} is {st}: a volume attaches to a running or stopped instance"
                ),
            ))
        }
    }
    if v.zone != view.zone {
        return Err(refused(
            OP,
            format!(
                "volume {volume_id} is in zone {} and instance {instance_id} in zone {}: a volume only attaches to an instance of its own zone",
                v.zone, view.zone
            ),
        ));
    }
    if let Some(m) = inst
        .block_device_mappings()
        .iter()
        .find(|m| m.device_name() == Some(device))
    {
        return Err(refused(
            OP,
            format!(
                "device {device} of instance {instance_id} is taken by volume {}; use another device name",
                m.ebs().and_then(|e| e.volume_id()).unwrap_or("?")
            ),
        ));
    }
    tracing::info!(volume = %volume_id, instance = %instance_id, %device, "attaching a volume");
    c.call(
        OP,
        "AttachVolume",
        volume_id,
        c.client
            .attach_volume()
            .volume_id(volume_id)
            .instance_id(instance_id)
            .device(device)
            .send(),
    )
    .await?;
    Ok(())
}

/// See [`understudy_cloud::Cloud::detach_volume`] and the module documentation.
pub(crate) async fn detach_volume(
    c: &Ec2Cloud,
    volume_id: &str,
    instance_id: &str,
    force: bool,
) -> Result<(), CloudError> {
    const OP: &str = "detach_volume";
    const CALL: &str = "DetachVolume";
    let v = c.volume(OP, volume_id).await?;
    let not_attached = |v: &Volume| {
        refused(
            OP,
            format!(
                "volume {volume_id} is not attached to {instance_id} (it is {}, attached to {}); nothing to detach from it",
                v.state,
                attached_list(v)
            ),
        )
    };
    let Some(a) = v.attachments.iter().find(|a| a.instance_id == instance_id) else {
        return Err(not_attached(&v));
    };
    if a.state == "detaching" && !force {
        return Ok(());
    }
    tracing::info!(volume = %volume_id, instance = %instance_id, force, "detaching a volume");
    let r = c
        .timed(
            OP,
            CALL,
            c.client
                .detach_volume()
                .volume_id(volume_id)
                .instance_id(instance_id)
                .force(force)
                .send(),
        )
        .await?;
    match r {
        Ok(_) => Ok(()),
        // Detached meanwhile (by another controller, or the instance ended).
        Err(e) if e.code() == Some("InvalidAttachment.NotFound") => {
            let now = c.volume(OP, volume_id).await?;
            Err(not_attached(&now))
        }
        Err(e) => Err(map_sdk_error(OP, CALL, volume_id, &e)),
    }
}

/// See [`understudy_cloud::Cloud::tag_volume`].
pub(crate) async fn tag_volume(
    c: &Ec2Cloud,
    volume_id: &str,
    tags: &[Tag],
) -> Result<(), CloudError> {
    const OP: &str = "tag_volume";
    check_tags(PROVIDER, OP, tags)?;
    // CreateTags does not check every resource id everywhere (moto): check here.
    c.volume(OP, volume_id).await?;
    if tags.is_empty() {
        return Ok(());
    }
    c.call(
        OP,
        "CreateTags",
        volume_id,
        c.client
            .create_tags()
            .resources(volume_id)
            .set_tags(Some(sdk_tags(tags)))
            .send(),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Ec2Config {
        Ec2Config::new("us-east-1")
    }

    #[test]
    fn launch_keys_are_checked_together() {
        assert_eq!(LaunchSource::from_config(&cfg()), Ok(None));
        let t = Ec2Config {
            launch_template_id: Some("lt-1".into()),
            ..cfg()
        };
        assert_eq!(
            LaunchSource::from_config(&t),
            Ok(Some(LaunchSource::Template {
                id: "lt-1".into(),
                version: None
            }))
        );
        let img = Ec2Config {
            image_id: Some("ami-1".into()),
            instance_type: Some("t3.micro".into()),
            subnet_id: Some("subnet-1".into()),
            security_group_ids: vec!["sg-1".into()],
            ..cfg()
        };
        assert!(matches!(
            LaunchSource::from_config(&img),
            Ok(Some(LaunchSource::Image { .. }))
        ));
        let bad = [
            (
                Ec2Config {
                    image_id: Some("ami-1".into()),
                    ..t.clone()
                },
                "set one",
            ),
            (
                Ec2Config {
                    launch_template_id: Some("tmpl".into()),
                    ..cfg()
                },
                "not a launch template id",
            ),
            (
                Ec2Config {
                    instance_type: Some("t3.micro".into()),
                    ..t.clone()
                },
                "instance_type goes with image_id",
            ),
            (
                Ec2Config {
                    launch_template_version: Some("latest".into()),
                    ..t.clone()
                },
                "not \"$Default\", \"$Latest\" or a version number",
            ),
            (
                Ec2Config {
                    subnet_id: None,
                    ..img.clone()
                },
                "needs subnet_id",
            ),
            (
                Ec2Config {
                    instance_type: None,
                    ..img.clone()
                },
                "needs instance_type",
            ),
            (
                Ec2Config {
                    security_group_ids: vec!["default".into()],
                    ..img.clone()
                },
                "not a security group id",
            ),
            (
                Ec2Config {
                    subnet_id: Some("subnet-1".into()),
                    ..cfg()
                },
                "subnet_id set without launch_template_id or image_id",
            ),
            (
                Ec2Config {
                    volume_type: "io2".into(),
                    ..cfg()
                },
                "provisioned IOPS",
            ),
            (
                Ec2Config {
                    volume_type: "gp4".into(),
                    ..cfg()
                },
                "volume_type \"gp4\"",
            ),
        ];
        for (c, want) in bad {
            let e = LaunchSource::from_config(&c).unwrap_err();
            assert!(e.contains(want), "{e:?} should mention {want:?}");
        }
        for v in ["$Default", "$Latest", "3"] {
            let c = Ec2Config {
                launch_template_version: Some(v.into()),
                ..t.clone()
            };
            LaunchSource::from_config(&c).unwrap();
        }
    }

    #[test]
    fn instances_and_volumes_from_the_sdk() {
        use aws_sdk_ec2::types::{
            InstanceNetworkInterface, InstanceNetworkInterfaceAttachment, InstanceStateName,
            Placement, VolumeAttachmentState,
        };
        let ni = |id: &str, idx: i32| {
            InstanceNetworkInterface::builder()
                .network_interface_id(id)
                .attachment(
                    InstanceNetworkInterfaceAttachment::builder()
                        .device_index(idx)
                        .build(),
                )
                .build()
        };
        let i = SdkInstance::builder()
            .instance_id("i-1")
            .network_interfaces(ni("eni-2", 1))
            .network_interfaces(ni("eni-1", 0))
            .private_ip_address("10.0.1.5")
            .placement(Placement::builder().availability_zone("us-east-1a").build())
            .state(
                aws_sdk_ec2::types::InstanceState::builder()
                    .name(InstanceStateName::Pending)
                    .build(),
            )
            .tags(
                aws_sdk_ec2::types::Tag::builder()
                    .key(tags::PAIR)
                    .value("fs1")
                    .build(),
            )
            .build();
        let got = instance_from_sdk(&i);
        assert_eq!(got.interface_id, "eni-1");
        assert_eq!(got.private_ip, "10.0.1.5");
        assert_eq!(got.zone, "us-east-1a");
        assert_eq!(got.state, InstanceState::Pending);
        assert_eq!(got.tag(tags::PAIR), Some("fs1"));

        let v = aws_sdk_ec2::types::Volume::builder()
            .volume_id("vol-1")
            .availability_zone("us-east-1a")
            .size(10)
            .state(aws_sdk_ec2::types::VolumeState::InUse)
            .attachments(
                aws_sdk_ec2::types::VolumeAttachment::builder()
                    .instance_id("i-1")
                    .device("/dev/xvdf")
                    .state(VolumeAttachmentState::Attached)
                    .build(),
            )
            .build();
        let got = volume_from_sdk(&v);
        assert_eq!(got.state, VolumeState::InUse);
        assert!(got.attached_to("i-1"));
        assert_eq!(got.size_gib, 10);
        assert_eq!(attached_list(&got), "i-1 as /dev/xvdf (attached)");
    }
}
